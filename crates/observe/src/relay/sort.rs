//! Puts the flows of many nodes into one time order. Each node sends its own
//! flows in time order, but they reach the relay interleaved as the network
//! and the nodes' loads have it: a bounded buffer holds them and lets the
//! oldest go when it is full, or once it has waited [`DRAIN_AFTER`] (so a
//! quiet cluster still sees its flows within about a second).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use tokio::sync::mpsc;
use tonic::Status;

use crate::proto::observer::GetFlowsResponse;

/// Flows held at most, as Hubble Relay's default sort buffer.
pub const BUFFER_LEN: usize = 100;
/// A flow is let go once it is this old (by its timestamp), if the buffer
/// did not fill first; Hubble Relay's default drain timeout.
pub const DRAIN_AFTER: Duration = Duration::from_secs(1);
/// How often the buffer looks for flows that waited long enough.
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// Seconds and nanoseconds of a response's time (the flow's, else none: 0).
pub fn time_key(response: &GetFlowsResponse) -> (i64, i32) {
    let time = response.time.as_ref().or(match &response.response_types {
        Some(crate::proto::observer::get_flows_response::ResponseTypes::Flow(flow)) => {
            flow.time.as_ref()
        }
        _ => None,
    });
    time.map_or((0, 0), |t| (t.seconds, t.nanos))
}

/// A response in the heap: oldest first, then in arrival order.
struct Entry {
    key: (i64, i32),
    seq: u64,
    response: GetFlowsResponse,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.seq) == (other.key, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.key, self.seq).cmp(&(other.key, other.seq))
    }
}

/// Forwards what `input` receives to `output` in time order (within the
/// buffer's reach), holding at most `capacity` responses, until `input`
/// ends (then everything held goes) or `output` is closed.
pub async fn sort_into(
    mut input: mpsc::Receiver<GetFlowsResponse>,
    output: mpsc::Sender<Result<GetFlowsResponse, Status>>,
    capacity: usize,
) {
    let capacity = capacity.max(1);
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(DRAIN_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = input.recv() => {
                let Some(response) = received else { break };
                seq += 1;
                heap.push(Reverse(Entry { key: time_key(&response), seq, response }));
                if heap.len() > capacity
                    && let Some(Reverse(oldest)) = heap.pop()
                    && output.send(Ok(oldest.response)).await.is_err()
                {
                    return;
                }
            }
            _ = tick.tick() => {
                let cutoff = key_of(SystemTime::now() - DRAIN_AFTER);
                while heap.peek().is_some_and(|Reverse(e)| e.key <= cutoff) {
                    if let Some(Reverse(oldest)) = heap.pop()
                        && output.send(Ok(oldest.response)).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
    while let Some(Reverse(entry)) = heap.pop() {
        if output.send(Ok(entry.response)).await.is_err() {
            return;
        }
    }
}

fn key_of(at: SystemTime) -> (i64, i32) {
    let t = Timestamp::from(at);
    (t.seconds, t.nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::Flow;
    use crate::proto::observer::get_flows_response::ResponseTypes;

    fn at(seconds: i64, node: &str) -> GetFlowsResponse {
        let time = Some(Timestamp { seconds, nanos: 0 });
        GetFlowsResponse {
            time,
            node_name: node.into(),
            response_types: Some(ResponseTypes::Flow(Flow {
                time,
                node_name: node.into(),
                ..Flow::default()
            })),
        }
    }

    #[tokio::test]
    async fn interleaved_nodes_come_out_in_time_order() {
        let (tx, rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let sorter = tokio::spawn(sort_into(rx, out_tx, 4));
        // Two nodes, each in order, arriving interleaved and late.
        for response in [at(2, "a"), at(1, "b"), at(4, "a"), at(3, "b"), at(5, "b")] {
            tx.send(response).await.expect("send");
        }
        drop(tx);
        sorter.await.expect("sorter");
        let mut order = Vec::new();
        while let Some(Ok(r)) = out_rx.recv().await {
            order.push(time_key(&r).0);
        }
        assert_eq!(order, [1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_full_buffer_lets_the_oldest_go_and_old_flows_drain_by_themselves() {
        let (tx, rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        tokio::spawn(sort_into(rx, out_tx, 2));
        for seconds in [30, 10, 20] {
            tx.send(at(seconds, "a")).await.expect("send");
        }
        // Full at two: the oldest of the three goes at once.
        let first = out_rx.recv().await.expect("one").expect("ok");
        assert_eq!(time_key(&first).0, 10);
        // The input stays open: the two left are long past the drain age.
        let second = out_rx.recv().await.expect("drained").expect("ok");
        let third = out_rx.recv().await.expect("drained").expect("ok");
        assert_eq!((time_key(&second).0, time_key(&third).0), (20, 30));
        drop(tx);
    }
}
