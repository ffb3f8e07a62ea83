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
//! * **Slot notices**: by default `join`/`leave` return the `slot` notices at once. With
//!   `defer_slot_notices` they only mark the swarm, and [`Registry::take_slot_notices`] (called
//!   by the driver on a timer) tells each member its current slot if it differs from what it
//!   was last told: only the latest value matters, so churn between two calls costs a member at
//!   most one notice, or none if the churn cancelled out.
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
    /// Coalesce `slot` notices until [`Registry::take_slot_notices`] instead of returning them
    /// from `join`/`leave`.
    pub defer_slot_notices: bool,
    /// Send `peer_left` only to the partners that know the leaver (they were given it in
    /// `joined`/`peers`, or it signaled them through [`Registry::relay`]); otherwise to every
    /// partner. A member that never heard of the leaver has nothing to forget, and a member
    /// churning join/leave cannot make the members it was given receive a notice per loop.
    pub peer_left_only_if_known: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            intro_peers: 8,
            max_slots: 256,
            member_capacity: 12,
            defer_slot_notices: false,
            peer_left_only_if_known: false,
        }
    }
}

/// One side of an introduced pair.
#[derive(Debug, Clone, Copy)]
struct Partner {
    id: PeerId,
    /// This member knows `id`: it was given `id` in `joined`/`peers`, or `id` signaled it.
    knows: bool,
}

#[derive(Debug, Default)]
struct Member {
    index: usize,
    /// Members introduced to this one or this one to them, still members (at most
    /// `MAX_PARTNERS`); its length is the estimate of the member's open connections.
    partners: Vec<Partner>,
    /// (slot, slots) this member was last told (deferred slot notices only).
    told: (u32, u32),
}

impl Member {
    fn degree(&self) -> u32 {
        self.partners.len() as u32
    }

    fn has_room(&self) -> bool {
        self.partners.len() < MAX_PARTNERS
    }

    fn partner(&self, id: PeerId) -> Option<&Partner> {
        self.partners.iter().find(|p| p.id == id)
    }
}

#[derive(Debug, Default)]
struct Swarm {
    order: Vec<PeerId>,
    members: HashMap<PeerId, Member>,
    /// Deferred slot notices: the slot count changed, every member must be checked.
    dirty_all: bool,
    /// Deferred slot notices: members whose slot changed (the slot count did not).
    dirty: Vec<PeerId>,
}

/// Messages the server must send as a consequence of a registry change.
pub type Notices = Vec<(PeerId, ServerMsg)>;

#[derive(Debug, Default)]
pub struct Registry {
    cfg: RegistryConfig,
    swarms: HashMap<String, Swarm>,
    /// Swarms with deferred slot notices pending (may hold ids of swarms gone since).
    dirty: Vec<String>,
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
            dirty: Vec::new(),
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
            Some(m) if m.partner(to).is_some() => Relay::Allowed,
            _ => Relay::NotIntroduced,
        }
    }

    /// [`Self::may_relay`], and when allowed records that `to` now knows `from` (so `to` gets
    /// `peer_left` when `from` leaves, with `peer_left_only_if_known`). The server calls this.
    pub fn relay(&mut self, swarm: &str, from: PeerId, to: PeerId) -> Relay {
        let r = self.may_relay(swarm, from, to);
        if r == Relay::Allowed
            && let Some(p) = self
                .swarms
                .get_mut(swarm)
                .and_then(|s| s.members.get_mut(&to))
                .and_then(|m| m.partners.iter_mut().find(|p| p.id == from))
        {
            p.knows = true;
        }
        r
    }

    /// The members of `swarm` (in slot order; empty if it has none).
    pub fn members(&self, swarm: &str) -> &[PeerId] {
        self.swarms.get(swarm).map_or(&[], |s| s.order.as_slice())
    }

    /// Forgets `swarm` and all its members at once, without notices (a signaling cluster
    /// hands the swarm to another node, whose members are told by their new owner).
    pub fn remove_swarm(&mut self, swarm: &str) -> bool {
        self.swarms.remove(swarm).is_some()
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
        let defer = self.cfg.defer_slot_notices;
        let s = self.swarms.entry(swarm.to_owned()).or_default();
        let mut notices = Vec::new();
        let mut mark = false;
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
                if defer {
                    mark = !std::mem::replace(&mut s.dirty_all, true) && s.dirty.is_empty();
                } else {
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
        }
        if mark {
            self.dirty.push(swarm.to_owned());
        }
        let peers = self.introduce(swarm, peer, rng);
        let slots = self.slots(self.member_count(swarm));
        let mut slot = 0;
        if let Some(me) = self
            .swarms
            .get_mut(swarm)
            .and_then(|s| s.members.get_mut(&peer))
        {
            slot = (me.index % max_slots) as u32;
            me.told = (slot, slots);
        }
        let reply = ServerMsg::Joined {
            swarm: swarm.to_owned(),
            peers,
            slot,
            slots,
        };
        Joined { reply, notices }
    }

    /// Deferred slot notices (`defer_slot_notices`): each member of a swarm that changed since
    /// the last call whose (slot, slots) differs from what it was last told gets one `slot`
    /// notice with the current values. Costs O(members whose slot may have changed).
    pub fn take_slot_notices(&mut self) -> Notices {
        let max_slots = self.cfg.max_slots;
        let mut notices = Vec::new();
        for id in std::mem::take(&mut self.dirty) {
            let Some(s) = self.swarms.get_mut(&id) else {
                continue;
            };
            let slots = (s.order.len() as u32).min(max_slots).max(1);
            let check: Vec<PeerId> = if std::mem::take(&mut s.dirty_all) {
                s.dirty.clear();
                s.order.clone()
            } else {
                std::mem::take(&mut s.dirty)
            };
            for p in check {
                let Some(m) = s.members.get_mut(&p) else {
                    continue;
                };
                let now = ((m.index as u32) % max_slots, slots);
                if m.told != now {
                    m.told = now;
                    notices.push((
                        p,
                        ServerMsg::Slot {
                            swarm: id.clone(),
                            slot: now.0,
                            slots: now.1,
                        },
                    ));
                }
            }
        }
        notices
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
        let known = |c: &PeerId| known.iter().any(|p| p.id == *c);
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
        cands.retain(|c| *c != peer && !known(c) && s.members.get(c).is_some_and(Member::has_room));
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
                m.partners.push(Partner {
                    id: peer,
                    knows: false,
                });
            }
        }
        if let Some(me) = s.members.get_mut(&peer) {
            me.partners
                .extend(cands.iter().map(|&id| Partner { id, knows: true }));
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
        let only_if_known = self.cfg.peer_left_only_if_known;
        for p in &me.partners {
            if let Some(m) = s.members.get_mut(&p.id) {
                let knows = m.partner(peer).is_some_and(|x| x.knows);
                m.partners.retain(|x| x.id != peer);
                if knows || !only_if_known {
                    notices.push((
                        p.id,
                        ServerMsg::PeerLeft {
                            swarm: swarm.to_owned(),
                            peer,
                        },
                    ));
                }
            }
        }
        s.order.swap_remove(me.index);
        let n = s.order.len();
        if n == 0 {
            self.swarms.remove(swarm);
            return notices;
        }
        if me.index < n {
            let moved = s.order[me.index];
            if let Some(m) = s.members.get_mut(&moved) {
                m.index = me.index;
            }
        }
        let slots = (n as u32).min(max_slots as u32);
        if self.cfg.defer_slot_notices {
            let was_clean = !s.dirty_all && s.dirty.is_empty();
            if n < max_slots {
                s.dirty_all = true;
            } else if me.index < n && !s.dirty_all {
                s.dirty.push(s.order[me.index]);
            }
            if was_clean && (s.dirty_all || !s.dirty.is_empty()) {
                self.dirty.push(swarm.to_owned());
            }
        } else if n < max_slots {
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
        assert!(got.iter().all(|p| seven.partner(*p).is_some()));
        assert!(reg.introduce("s", 7, &mut rng).is_empty());
        let check = |reg: &Registry| {
            let s = &reg.swarms["s"];
            for (id, m) in &s.members {
                assert!(m.partners.len() <= MAX_PARTNERS);
                for p in m.partners.iter().map(|p| p.id) {
                    assert!(
                        s.members[&p].partner(*id).is_some(),
                        "{id} -> {p} one-sided"
                    );
                    assert_eq!(reg.may_relay("s", *id, p), Relay::Allowed);
                    assert_eq!(reg.may_relay("s", p, *id), Relay::Allowed);
                }
            }
        };
        check(&reg);
        // Churn elsewhere does not forget a pair of two members that stay.
        let pair = reg.swarms["s"].members[&7].partners[0].id;
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
                    && reg.swarms["s"].members[&7].partner(*p).is_none()
            })
            .expect("a member not paired with 7");
        assert_eq!(reg.may_relay("s", 7, stranger), Relay::NotIntroduced);
        assert_eq!(reg.may_relay("s", stranger, 7), Relay::NotIntroduced);
        assert_eq!(reg.may_relay("s", 7, 7), Relay::UnknownPeer);
        assert_eq!(reg.may_relay("s", 7, 10_000), Relay::UnknownPeer);
        assert_eq!(reg.may_relay("t", 7, pair), Relay::UnknownPeer);
        reg.leave("s", pair);
        assert_eq!(reg.may_relay("s", 7, pair), Relay::UnknownPeer);
        assert!(reg.swarms["s"].members[&7].partner(pair).is_none());
    }

    /// Deferred slot notices: churn that cancels out between two flushes costs nobody a notice;
    /// otherwise each member gets at most one per flush, and after a flush every member was
    /// told its current slot (compact and unique, as with immediate notices).
    #[test]
    fn deferred_slot_notices_coalesce() {
        let mut rng = SmallRng::seed_from_u64(4);
        for max_slots in [4, 256] {
            let mut reg = Registry::new(RegistryConfig {
                max_slots,
                defer_slot_notices: true,
                ..Default::default()
            });
            let mut told: HashMap<PeerId, (u32, u32)> = HashMap::new();
            for p in 0..10 {
                let j = reg.join("s", p, &mut rng);
                assert!(j.notices.is_empty());
                told.insert(p, slot_of(&j.reply));
            }
            let apply = |told: &mut HashMap<PeerId, (u32, u32)>, n: Notices| {
                let mut seen = std::collections::HashSet::new();
                for (p, m) in n {
                    assert!(seen.insert(p), "two notices for {p} in one flush");
                    told.insert(p, slot_of(&m));
                }
            };
            apply(&mut told, reg.take_slot_notices());
            // A churner joins and leaves 20 times between two flushes: nothing to tell.
            for _ in 0..20 {
                reg.join("s", 99, &mut rng);
                let n = reg.leave("s", 99);
                assert!(
                    n.iter()
                        .all(|(_, m)| matches!(m, ServerMsg::PeerLeft { .. }))
                );
            }
            assert!(reg.take_slot_notices().is_empty());
            // Real changes: members leave, others join; one flush tells everyone what changed.
            for p in [0, 3, 5] {
                reg.leave("s", p);
                told.remove(&p);
            }
            for p in 10..12 {
                let j = reg.join("s", p, &mut rng);
                told.insert(p, slot_of(&j.reply));
            }
            apply(&mut told, reg.take_slot_notices());
            let n = reg.member_count("s") as u32;
            let slots = n.min(max_slots);
            let mut v: Vec<(u32, u32)> = told.values().copied().collect();
            v.sort();
            let want: Vec<(u32, u32)> = {
                let mut w: Vec<(u32, u32)> = (0..n).map(|i| (i % max_slots, slots)).collect();
                w.sort();
                w
            };
            assert_eq!(v, want, "max_slots {max_slots}");
            assert!(reg.take_slot_notices().is_empty());
        }
    }

    /// With `peer_left_only_if_known`, a leaver's partners hear of it only if they knew it: they
    /// were given it, or it signaled them.
    #[test]
    fn peer_left_only_to_those_who_know() {
        let mut rng = SmallRng::seed_from_u64(5);
        for only_if_known in [false, true] {
            let mut reg = Registry::new(RegistryConfig {
                peer_left_only_if_known: only_if_known,
                ..Default::default()
            });
            reg.join("s", 1, &mut rng);
            reg.join("s", 2, &mut rng);
            // 3 is given 1 and 2; it signals 2 only.
            reg.join("s", 3, &mut rng);
            assert_eq!(reg.relay("s", 3, 2), Relay::Allowed);
            let told = |n: Notices| {
                let mut v: Vec<PeerId> = n
                    .into_iter()
                    .filter(|(_, m)| matches!(m, ServerMsg::PeerLeft { .. }))
                    .map(|(p, _)| p)
                    .collect();
                v.sort();
                v
            };
            let want: Vec<PeerId> = if only_if_known { vec![2] } else { vec![1, 2] };
            assert_eq!(told(reg.leave("s", 3)), want);
            // 2 was given 1 when it joined: 2 knows 1.
            assert_eq!(told(reg.leave("s", 1)), vec![2]);
        }
    }
}
