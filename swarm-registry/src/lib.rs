//! Swarm registry: membership, introductions and seeding slots. Pure logic, no IO and no clock,
//! so the WebSocket server and the swarm simulator run the same code.
//!
//! * **Introductions**: a joining member gets up to `intro_peers` members to connect to, sampled
//!   at random and preferring those with the fewest known connections (so the newest members
//!   are not the only ones that are picked, and nobody is swamped).
//! * **Slots**: member `i` (in a compact order) holds slot `i % max_slots`; `slots` is
//!   `min(members, max_slots)`. The member whose slot is `seq % slots` fetches segment `seq`
//!   from the origin first (see peer-core's live-edge coordination). On leave the last member
//!   takes the free index, so only that member and (while the swarm is under `max_slots`) the
//!   slot count change.
//!
//! * **Pairs**: every introduction is recorded on both sides (the member's *partners*). The
//!   server relays handshakes only within a pair ([`Registry::may_relay`]), in either direction,
//!   for as long as both stay members; so a member can reach only the members it was introduced
//!   to or that were introduced to it, not every member of the swarm.
//!
//! Bounds: a member has at most `MAX_PARTNERS` partners. An introduction is made only when both
//! sides have room (a member whose list is full is not offered to others, and gets no new
//! members until some of its partners leave); a pair is never forgotten while both are members.
//! A swarm's size is capped by the server's connection limits.

use std::collections::HashMap;

use protocol::PeerId;
use protocol::signaling::ServerMsg;
use rand::Rng;

/// Partners (introduced pairs) per member: relays are allowed within a pair, `peer_left` goes to
/// the partners, and the count is the member's estimated number of connections.
pub const MAX_PARTNERS: usize = 64;

/// Whether a handshake may be relayed from one member to another ([`Registry::may_relay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    Allowed,
    /// The receiver is not a member of the swarm (left, never was, or is the sender).
    UnknownPeer,
    /// Both are members but the server never introduced them to each other.
    NotIntroduced,
}

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Members returned to a joining viewer.
    pub intro_peers: usize,
    /// Upper bound of the slot count (above it, several members share a slot).
    pub max_slots: u32,
    /// Connections a member is assumed to accept (members at or above it are picked last).
    pub member_capacity: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            intro_peers: 8,
            max_slots: 256,
            member_capacity: 12,
        }
    }
}

#[derive(Debug, Default)]
struct Member {
    index: usize,
    /// Members introduced to this one or this one to them, still members (at most
    /// `MAX_PARTNERS`); its length is the estimate of the member's open connections.
    partners: Vec<PeerId>,
}

impl Member {
    fn degree(&self) -> u32 {
        self.partners.len() as u32
    }

    fn has_room(&self) -> bool {
        self.partners.len() < MAX_PARTNERS
    }
}

#[derive(Debug, Default)]
struct Swarm {
    order: Vec<PeerId>,
    members: HashMap<PeerId, Member>,
}

/// Messages the server must send as a consequence of a registry change.
pub type Notices = Vec<(PeerId, ServerMsg)>;

#[derive(Debug, Default)]
pub struct Registry {
    cfg: RegistryConfig,
    swarms: HashMap<String, Swarm>,
}

/// Result of a join.
#[derive(Debug)]
pub struct Joined {
    /// The `joined` message for the new member.
    pub reply: ServerMsg,
    /// Messages for other members (slot count changes).
    pub notices: Notices,
}

impl Registry {
    pub fn new(cfg: RegistryConfig) -> Self {
        Registry {
            cfg,
            swarms: HashMap::new(),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    pub fn swarm_count(&self) -> usize {
        self.swarms.len()
    }

    pub fn member_count(&self, swarm: &str) -> usize {
        self.swarms.get(swarm).map_or(0, |s| s.order.len())
    }

    pub fn is_member(&self, swarm: &str, peer: PeerId) -> bool {
        self.swarms
            .get(swarm)
            .is_some_and(|s| s.members.contains_key(&peer))
    }

    /// Whether `from` may send a handshake to `to` in `swarm`: both are members and one was
    /// introduced to the other (in `joined` or `peers`), in either direction.
    pub fn may_relay(&self, swarm: &str, from: PeerId, to: PeerId) -> Relay {
        let Some(s) = self.swarms.get(swarm) else {
            return Relay::UnknownPeer;
        };
        if from == to || !s.members.contains_key(&to) {
            return Relay::UnknownPeer;
        }
        match s.members.get(&from) {
            Some(m) if m.partners.contains(&to) => Relay::Allowed,
            _ => Relay::NotIntroduced,
        }
    }

    /// Swarm ids with their member counts.
    pub fn swarms(&self) -> impl Iterator<Item = (&str, usize)> {
        self.swarms.iter().map(|(k, s)| (k.as_str(), s.order.len()))
    }

    fn slots(&self, n: usize) -> u32 {
        (n as u32).min(self.cfg.max_slots).max(1)
    }

    /// Adds `peer` to `swarm` (joining twice just re-introduces).
    pub fn join<R: Rng>(&mut self, swarm: &str, peer: PeerId, rng: &mut R) -> Joined {
        let max_slots = self.cfg.max_slots as usize;
        let s = self.swarms.entry(swarm.to_owned()).or_default();
        let mut notices = Vec::new();
        if !s.members.contains_key(&peer) {
            let index = s.order.len();
            s.order.push(peer);
            s.members.insert(
                peer,
                Member {
                    index,
                    ..Default::default()
                },
            );
            // The slot count grew: tell everyone else (bounded by max_slots members).
            if s.order.len() <= max_slots {
                let slots = s.order.len() as u32;
                for (i, &other) in s.order.iter().enumerate() {
                    if other != peer {
                        notices.push((
                            other,
                            ServerMsg::Slot {
                                swarm: swarm.to_owned(),
                                slot: (i % max_slots) as u32,
                                slots,
                            },
                        ));
                    }
                }
            }
        }
        let peers = self.introduce(swarm, peer, rng);
        let s = &self.swarms[swarm];
        let index = s.members[&peer].index;
        let reply = ServerMsg::Joined {
            swarm: swarm.to_owned(),
            peers,
            slot: (index % max_slots) as u32,
            slots: self.slots(s.order.len()),
        };
        Joined { reply, notices }
    }

    /// Picks up to `intro_peers` members for `peer` to connect to and records the pairs on both
    /// sides. Only members with room in their partner list are picked, and no more than `peer`
    /// has room for.
    pub fn introduce<R: Rng>(&mut self, swarm: &str, peer: PeerId, rng: &mut R) -> Vec<PeerId> {
        let cap = self.cfg.member_capacity;
        let Some(s) = self.swarms.get_mut(swarm) else {
            return Vec::new();
        };
        let Some(me) = s.members.get(&peer) else {
            return Vec::new();
        };
        let k = self
            .cfg
            .intro_peers
            .min(MAX_PARTNERS - me.partners.len().min(MAX_PARTNERS));
        if k == 0 {
            return Vec::new();
        }
        let known = &me.partners;
        let n = s.order.len();
        let mut cands: Vec<PeerId> = Vec::new();
        if n <= 4 * k + 1 {
            cands.extend(s.order.iter().copied());
        } else {
            // Sample 4k at random: O(k), not O(members).
            for _ in 0..4 * k {
                cands.push(s.order[rng.gen_range(0..n)]);
            }
        }
        cands.retain(|c| {
            *c != peer && !known.contains(c) && s.members.get(c).is_some_and(Member::has_room)
        });
        cands.sort_unstable();
        cands.dedup();
        // Random order, then stable sort by "full or not": random among those with free slots.
        for i in (1..cands.len()).rev() {
            let j = rng.gen_range(0..=i);
            cands.swap(i, j);
        }
        cands.sort_by_key(|c| {
            let d = s.members.get(c).map_or(u32::MAX, Member::degree);
            (d >= cap, d / 4)
        });
        cands.truncate(k);
        for c in &cands {
            if let Some(m) = s.members.get_mut(c) {
                m.partners.push(peer);
            }
        }
        if let Some(me) = s.members.get_mut(&peer) {
            me.partners.extend_from_slice(&cands);
        }
        cands
    }

    /// Removes `peer` from `swarm`; returns the notices to send (peer_left to its partners, slot
    /// changes). Unknown members are ignored.
    pub fn leave(&mut self, swarm: &str, peer: PeerId) -> Notices {
        let max_slots = self.cfg.max_slots as usize;
        let Some(s) = self.swarms.get_mut(swarm) else {
            return Vec::new();
        };
        let Some(me) = s.members.remove(&peer) else {
            return Vec::new();
        };
        let mut notices = Vec::new();
        for p in &me.partners {
            if let Some(m) = s.members.get_mut(p) {
                m.partners.retain(|x| *x != peer);
                notices.push((
                    *p,
                    ServerMsg::PeerLeft {
                        swarm: swarm.to_owned(),
                        peer,
                    },
                ));
            }
        }
        s.order.swap_remove(me.index);
        let n = s.order.len();
        if n == 0 {
            self.swarms.remove(swarm);
            return notices;
        }
        let slots = (n as u32).min(max_slots as u32);
        if n < max_slots {
            // Slot count shrank: everybody learns the new count (and the moved member its slot).
            for (i, &other) in s.order.iter().enumerate() {
                notices.push((
                    other,
                    ServerMsg::Slot {
                        swarm: swarm.to_owned(),
                        slot: i as u32,
                        slots,
                    },
                ));
            }
        } else if me.index < n {
            let moved = s.order[me.index];
            notices.push((
                moved,
                ServerMsg::Slot {
                    swarm: swarm.to_owned(),
                    slot: (me.index % max_slots) as u32,
                    slots,
                },
            ));
        }
        if me.index < n {
            let moved = s.order[me.index];
            if let Some(m) = s.members.get_mut(&moved) {
                m.index = me.index;
            }
        }
        notices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn slot_of(msg: &ServerMsg) -> (u32, u32) {
        match msg {
            ServerMsg::Joined { slot, slots, .. } | ServerMsg::Slot { slot, slots, .. } => {
                (*slot, *slots)
            }
            other => panic!("not a slot message: {other:?}"),
        }
    }

    #[test]
    fn slots_stay_compact_and_unique() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut reg = Registry::new(RegistryConfig {
            max_slots: 4,
            ..Default::default()
        });
        let mut slots: HashMap<PeerId, (u32, u32)> = HashMap::new();
        let apply = |slots: &mut HashMap<PeerId, (u32, u32)>, n: Notices| {
            for (p, m) in n {
                if matches!(m, ServerMsg::Slot { .. }) {
                    slots.insert(p, slot_of(&m));
                }
            }
        };
        for p in 1..=3 {
            let j = reg.join("s", p, &mut rng);
            slots.insert(p, slot_of(&j.reply));
            apply(&mut slots, j.notices);
        }
        let mut v: Vec<_> = slots.values().copied().collect();
        v.sort();
        assert_eq!(v, vec![(0, 3), (1, 3), (2, 3)]);
        let n = reg.leave("s", 1);
        slots.remove(&1);
        apply(&mut slots, n);
        let mut v: Vec<_> = slots.values().copied().collect();
        v.sort();
        assert_eq!(v, vec![(0, 2), (1, 2)]);
    }

    #[test]
    fn introductions_exclude_self_and_spread() {
        let mut rng = SmallRng::seed_from_u64(2);
        let mut reg = Registry::new(RegistryConfig::default());
        for p in 0..100 {
            let j = reg.join("s", p, &mut rng);
            if let ServerMsg::Joined { peers, .. } = j.reply {
                assert!(!peers.contains(&p));
                assert!(peers.len() <= 8);
                assert_eq!(peers.len(), (p as usize).min(8));
            }
        }
        // Nobody is swamped: the early members are not introduced to everyone.
        let max_degree = reg.swarms["s"].members.values().map(Member::degree).max();
        assert!(max_degree.is_some_and(|d| d <= 24), "{max_degree:?}");
        assert!(
            reg.leave("s", 5)
                .iter()
                .all(|(_, m)| !matches!(m, ServerMsg::Joined { .. }))
        );
        assert!(!reg.is_member("s", 5));
        assert_eq!(reg.member_count("s"), 99);
    }

    /// Every pair is recorded on both sides and relayable both ways while both are members;
    /// nobody holds more than `MAX_PARTNERS`; strangers are not relayable.
    #[test]
    fn pairs_are_symmetric_bounded_and_kept() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut reg = Registry::new(RegistryConfig::default());
        for p in 0..300 {
            reg.join("s", p, &mut rng);
        }
        // A greedy member asks for more until it is full, and stays full.
        let mut got: Vec<PeerId> = Vec::new();
        for _ in 0..20 {
            got.extend(reg.introduce("s", 7, &mut rng));
        }
        let seven = &reg.swarms["s"].members[&7];
        assert_eq!(seven.partners.len(), MAX_PARTNERS);
        assert!(got.iter().all(|p| seven.partners.contains(p)));
        assert!(reg.introduce("s", 7, &mut rng).is_empty());
        let check = |reg: &Registry| {
            let s = &reg.swarms["s"];
            for (id, m) in &s.members {
                assert!(m.partners.len() <= MAX_PARTNERS);
                for p in &m.partners {
                    assert!(s.members[p].partners.contains(id), "{id} -> {p} one-sided");
                    assert_eq!(reg.may_relay("s", *id, *p), Relay::Allowed);
                    assert_eq!(reg.may_relay("s", *p, *id), Relay::Allowed);
                }
            }
        };
        check(&reg);
        // Churn elsewhere does not forget a pair of two members that stay.
        let pair = reg.swarms["s"].members[&7].partners[0];
        for p in 300..400 {
            reg.join("s", p, &mut rng);
            if p % 2 == 0 {
                reg.leave("s", p - 50);
            }
        }
        check(&reg);
        if reg.is_member("s", pair) {
            assert_eq!(reg.may_relay("s", 7, pair), Relay::Allowed);
        }
        let stranger = (0..400)
            .find(|p| {
                *p != 7
                    && reg.is_member("s", *p)
                    && !reg.swarms["s"].members[&7].partners.contains(p)
            })
            .expect("a member not paired with 7");
        assert_eq!(reg.may_relay("s", 7, stranger), Relay::NotIntroduced);
        assert_eq!(reg.may_relay("s", stranger, 7), Relay::NotIntroduced);
        assert_eq!(reg.may_relay("s", 7, 7), Relay::UnknownPeer);
        assert_eq!(reg.may_relay("s", 7, 10_000), Relay::UnknownPeer);
        assert_eq!(reg.may_relay("t", 7, pair), Relay::UnknownPeer);
        reg.leave("s", pair);
        assert_eq!(reg.may_relay("s", 7, pair), Relay::UnknownPeer);
        assert!(!reg.swarms["s"].members[&7].partners.contains(&pair));
    }
}
