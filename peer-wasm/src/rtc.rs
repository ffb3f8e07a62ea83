//! Peer connections: one `RTCPeerConnection` per [`ConnId`] the core numbers, with the
//! protocol's negotiated binary data channel (id 0). Every handler reports to its own `ConnId`
//! only, and nothing more is reported once the core closed it or heard it closed.

use std::cell::RefCell;
use std::rc::Weak;

use bytes::Bytes;
use js_sys::{Reflect, Uint8Array};
use peer_core::{ConnId, Input};
use protocol::signaling::SignalData;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{
    MessageEvent, RtcConfiguration, RtcDataChannel, RtcDataChannelInit, RtcDataChannelType,
    RtcIceCandidateInit, RtcPeerConnection, RtcPeerConnectionIceEvent, RtcPeerConnectionState,
    RtcSdpType, RtcSessionDescriptionInit,
};

use crate::{Cb, Inner, conn_weak};

/// `bufferedamountlow` fires under this, and the core hears about the drained buffer.
const BUFFERED_LOW: u32 = 16 * 1024;

/// One peer connection and the closures its event handlers point to (dropped with it).
pub(crate) struct Conn {
    pc: RtcPeerConnection,
    pub(crate) dc: RtcDataChannel,
    _cbs: [Cb; 6],
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Detach handlers first: a closure called after it is dropped throws.
        self.dc.set_onopen(None);
        self.dc.set_onclose(None);
        self.dc.set_onmessage(None);
        self.dc.set_onbufferedamountlow(None);
        self.pc.set_onicecandidate(None);
        self.pc.set_onconnectionstatechange(None);
        self.dc.close();
        self.pc.close();
    }
}

impl Inner {
    pub(crate) fn rtc_create(&mut self, conn: ConnId, offerer: bool) {
        let cfg = RtcConfiguration::new();
        // The page's own `iceServers` win over the signaling server's.
        let ice = if self.opts.ice_servers.is_object() {
            &self.opts.ice_servers
        } else {
            &self.welcome_ice
        };
        if ice.is_object() {
            cfg.set_ice_servers(ice);
        }
        if self.opts.relay_only {
            // Set by name: the typed setter's enum would cost the bundle for one string.
            let _ = Reflect::set(&cfg, &"iceTransportPolicy".into(), &"relay".into());
        }
        let Ok(pc) = RtcPeerConnection::new_with_configuration(&cfg) else {
            return self.feed(Input::RtcClosed { conn });
        };
        let init = RtcDataChannelInit::new();
        init.set_negotiated(true);
        init.set_id(0);
        let dc = pc.create_data_channel_with_data_channel_dict("p2p-cdn", &init);
        dc.set_binary_type(RtcDataChannelType::Arraybuffer);
        dc.set_buffered_amount_low_threshold(BUFFERED_LOW);

        let on = |input: Box<dyn Fn(JsValue) -> Option<Input>>| -> Cb {
            let me = self.me.clone();
            Closure::new(move |ev: JsValue| {
                if let Some(input) = input(ev) {
                    conn_weak(&me, conn, input);
                }
            })
        };
        let on_ice = on(Box::new(move |ev| {
            let c = ev
                .unchecked_into::<RtcPeerConnectionIceEvent>()
                .candidate()?;
            let data = SignalData::Candidate {
                candidate: c.candidate(),
                sdp_mid: c.sdp_mid(),
                sdp_m_line_index: c.sdp_m_line_index(),
            };
            Some(Input::RtcLocal { conn, data })
        }));
        let pc2 = pc.clone();
        let on_state = on(Box::new(move |_| {
            matches!(
                pc2.connection_state(),
                RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed
            )
            .then_some(Input::RtcClosed { conn })
        }));
        let on_open = on(Box::new(move |_| Some(Input::RtcOpen { conn })));
        let on_close = on(Box::new(move |_| Some(Input::RtcClosed { conn })));
        let on_msg = on(Box::new(move |ev| {
            // Only binary frames are part of the protocol; a string is malformed input and
            // reaches the core as an empty frame.
            let data = match ev.unchecked_into::<MessageEvent>().data().dyn_into() {
                Ok(buf) => Bytes::from(Uint8Array::new(&buf).to_vec()),
                Err(_) => Bytes::new(),
            };
            Some(Input::RtcMessage { conn, data })
        }));
        let dc2 = dc.clone();
        let on_low = on(Box::new(move |_| {
            let amount = dc2.buffered_amount() as usize;
            Some(Input::RtcBuffered { conn, amount })
        }));
        pc.set_onicecandidate(Some(on_ice.as_ref().unchecked_ref()));
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        dc.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        dc.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        dc.set_onmessage(Some(on_msg.as_ref().unchecked_ref()));
        dc.set_onbufferedamountlow(Some(on_low.as_ref().unchecked_ref()));
        if offerer {
            spawn_local(negotiate(self.me.clone(), conn, pc.clone(), None));
        }
        self.conns.insert(
            conn,
            Conn {
                pc,
                dc,
                _cbs: [on_ice, on_state, on_open, on_close, on_msg, on_low],
            },
        );
    }

    pub(crate) fn rtc_remote(&mut self, conn: ConnId, data: SignalData) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        let pc = c.pc.clone();
        let remote = match data {
            SignalData::Offer { sdp } => (RtcSdpType::Offer, sdp),
            SignalData::Answer { sdp } => (RtcSdpType::Answer, sdp),
            SignalData::Candidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                let init = RtcIceCandidateInit::new(&candidate);
                init.set_sdp_mid(sdp_mid.as_deref());
                init.set_sdp_m_line_index(sdp_m_line_index);
                // A candidate that does not apply costs that path only, not the connection.
                let _ = pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init));
                return;
            }
        };
        spawn_local(negotiate(self.me.clone(), conn, pc, Some(remote)));
    }

    /// Sends a frame; the core hears the channel's `bufferedAmount` once the burst of sends is
    /// over (see `drain`).
    pub(crate) fn rtc_send(&mut self, conn: ConnId, frame: &[u8]) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if c.dc.send_with_u8_array(frame).is_err() {
            self.conn_input(conn, Input::RtcClosed { conn });
        } else if !self.sent.contains(&conn) {
            self.sent.push(conn);
        }
    }
}

/// Applies a remote offer or answer (then reports [`Input::RtcRemoteApplied`]) and, after an
/// offer or when there is none (we offer), creates, sets and reports the local description.
async fn negotiate(
    me: Weak<RefCell<Inner>>,
    conn: ConnId,
    pc: RtcPeerConnection,
    remote: Option<(RtcSdpType, String)>,
) {
    let r = async {
        let local = match remote {
            Some((kind, sdp)) => {
                let desc = RtcSessionDescriptionInit::new(kind);
                desc.set_sdp(&sdp);
                JsFuture::from(pc.set_remote_description(&desc)).await?;
                conn_weak(&me, conn, Input::RtcRemoteApplied { conn });
                if kind != RtcSdpType::Offer {
                    return Ok(None);
                }
                RtcSdpType::Answer
            }
            None => RtcSdpType::Offer,
        };
        let offer = local == RtcSdpType::Offer;
        let d = JsFuture::from(if offer {
            pc.create_offer()
        } else {
            pc.create_answer()
        })
        .await?;
        let sdp = Reflect::get(&d, &"sdp".into())?
            .as_string()
            .unwrap_or_default();
        let desc = RtcSessionDescriptionInit::new(local);
        desc.set_sdp(&sdp);
        JsFuture::from(pc.set_local_description(&desc)).await?;
        Ok::<_, JsValue>(Some(if offer {
            SignalData::Offer { sdp }
        } else {
            SignalData::Answer { sdp }
        }))
    }
    .await;
    match r {
        Ok(None) => {}
        Ok(Some(data)) => conn_weak(&me, conn, Input::RtcLocal { conn, data }),
        Err(_) => conn_weak(&me, conn, Input::RtcClosed { conn }),
    }
}
