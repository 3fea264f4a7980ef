//! The ingester's two network-facing tasks: the *link*, which drives rumqttc's event loop (all
//! network I/O, reconnection with back-off, readiness), and the *acknowledger*, which turns
//! commit outcomes into PUBACKs on the connection each message arrived on.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{truncate, LinkEvent, MqttMetrics, PendingAck, RETRY, WARN_EVERY_ATTEMPTS};

/// Drives rumqttc's event loop: all network I/O, reconnection with back-off, and the
/// connection state for `/ready`.
pub(super) async fn drive_link(
    mut eventloop: EventLoop,
    events: mpsc::Sender<LinkEvent>,
    epoch: Arc<AtomicU64>,
    connected: watch::Sender<bool>,
    metrics: MqttMetrics,
    closing: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut retries = RETRY.retries();
    let mut failed_attempts: u64 = 0;
    let mut link_up = false;
    let mut disconnect_sent = false;
    loop {
        let polled = tokio::select! {
            () = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(_)) if disconnect_sent => {}
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                retries.reset();
                failed_attempts = 0;
                link_up = true;
                tracing::info!(
                    mqtt.session_present = ack.session_present,
                    "connected to the MQTT broker"
                );
                if events.send(LinkEvent::Connected).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let event = LinkEvent::Publish {
                    publish,
                    epoch: epoch.load(Ordering::Acquire),
                };
                if events.send(event).await.is_err() {
                    break;
                }
            }
            // Ready means subscribed, not merely connected: only then does the broker keep
            // messages for this session.
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .contains(&rumqttc::SubscribeReasonCode::Failure)
                {
                    tracing::error!("the MQTT broker refused ddms' subscription (check its ACL: ddms must subscribe to devices/+/telemetry and devices/+/heartbeat)");
                } else {
                    connected.send_replace(true);
                    metrics.connected.set(1);
                    tracing::debug!("subscribed to device topics");
                }
            }
            // Written after every ack queued before it. Not the end yet: closing our socket
            // while the broker's publishes sit unread in it would send a TCP reset, and a
            // reset makes the broker's kernel drop what it has not read yet — our last acks
            // and the DISCONNECT. So read on (and discard) until the broker closes.
            Ok(Event::Outgoing(Outgoing::Disconnect)) if closing.load(Ordering::Acquire) => {
                disconnect_sent = true;
            }

            Ok(_) => {}
            Err(e) => {
                // Acks still queued belong to the lost connection; the broker redelivers.
                epoch.fetch_add(1, Ordering::AcqRel);
                if closing.load(Ordering::Acquire) {
                    break;
                }
                metrics.connection_errors.inc();
                connected.send_replace(false);
                metrics.connected.set(0);
                let delay = retries.next_delay();
                if std::mem::take(&mut link_up) {
                    tracing::warn!(error = %e, "lost the connection to the MQTT broker; reconnecting");
                    if events.send(LinkEvent::Disconnected).await.is_err() {
                        break;
                    }
                } else {
                    failed_attempts += 1;
                    let refused = matches!(e, rumqttc::ConnectionError::ConnectionRefused(_));
                    if failed_attempts % WARN_EVERY_ATTEMPTS == 1 {
                        if refused {
                            tracing::error!(error = %e, attempts = failed_attempts, "the MQTT broker refused ddms (check mqtt.username, mqtt.password, TLS); retrying");
                        } else {
                            tracing::warn!(error = %e, attempts = failed_attempts, retry_in_ms = delay.as_millis() as u64, "cannot connect to the MQTT broker; retrying");
                        }
                    } else {
                        tracing::debug!(error = %e, attempts = failed_attempts, "cannot connect to the MQTT broker; retrying");
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Turns commit outcomes into PUBACKs on the connection the message came from.
pub(super) async fn acknowledge(
    mut acks: mpsc::UnboundedReceiver<PendingAck>,
    client: AsyncClient,
    epoch: Arc<AtomicU64>,
    outstanding: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    let mut reconnect_requested_in = None;
    while let Some(ack) = acks.recv().await {
        let current = epoch.load(Ordering::Acquire);
        if !ack.committed {
            // Only a reconnect makes the broker resend an unacknowledged message; one per
            // connection is enough for all of its messages.
            if !cancel.is_cancelled()
                && ack.epoch == current
                && reconnect_requested_in != Some(current)
            {
                tracing::error!(mqtt.topic = %truncate(&ack.publish.topic), "readings of an MQTT message could not be stored; reconnecting so the broker redelivers it");
                reconnect_requested_in = Some(current);
                let _ = client.try_disconnect();
            }
        } else if ack.epoch == current {
            // Waits only while the link is busy; the batch writer never waits for this.
            if client.ack(&ack.publish).await.is_err() {
                tracing::debug!("MQTT link gone; the broker redelivers the message");
            }
        }
        outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}
