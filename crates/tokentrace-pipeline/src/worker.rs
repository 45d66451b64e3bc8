//! The pipeline thread's loop: drain the queue in batches, let the assembler turn messages into
//! outputs, and fan every output out to every sink, in arrival order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::assemble::{Assembler, Output};
use crate::telemetry::{Msg, PipelineStats, Room};
use crate::{Sink, SinkError};

/// Items (spans, events, points; a message counts at least one) handled in a round at most
/// before the sinks are flushed: a round is a step every item waits through, so it stays
/// short.
const MAX_ROUND_ITEMS: u64 = 2048;
/// How often open spans are checked for their timeout when the queue is idle.
const TICK: Duration = Duration::from_millis(500);

pub(crate) struct Worker {
    assembler: Assembler,
    redactor: Option<crate::redact::Redactor>,
    sinks: Vec<Box<dyn Sink>>,
    stats: Arc<PipelineStats>,
    room: Arc<Room>,
    commits: Arc<crate::ack::Commits>,
}

impl Worker {
    pub(crate) fn new(
        assembler: Assembler,
        redactor: Option<crate::redact::Redactor>,
        sinks: Vec<Box<dyn Sink>>,
        stats: Arc<PipelineStats>,
        (room, commits): (Arc<Room>, Arc<crate::ack::Commits>),
    ) -> Self {
        Self {
            assembler,
            redactor,
            sinks,
            stats,
            room,
            commits,
        }
    }

    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        let mut out = Vec::with_capacity(MAX_ROUND_ITEMS as usize * 2);
        let mut last_tick = Instant::now();
        loop {
            let first = match rx.recv_timeout(TICK) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop(&mut out);
                    return;
                }
            };
            let round = Instant::now();
            let mut drained = 0;
            let mut next = first;
            let mut handled = 0;
            while let Some(msg) = next.take() {
                let bytes = msg.bytes();
                let weight = msg.weight();
                drained += bytes;
                self.stats.queue_depth.fetch_sub(weight, Ordering::Relaxed);
                self.stats.queue_bytes.fetch_sub(bytes, Ordering::Relaxed);
                match msg {
                    Msg::Flush(reply) => {
                        self.assembler.flush_calls(&mut out);
                        self.emit(&mut out);
                        self.mark_sinks();
                        self.each_sink(|s| s.sync());
                        let _ = reply.send(());
                    }
                    Msg::Shutdown => {
                        self.stop(&mut out);
                        return;
                    }
                    other => self.handle(other, &mut out),
                }
                handled += weight.max(1);
                if handled < MAX_ROUND_ITEMS {
                    next = rx.try_recv().ok();
                }
            }
            // Dequeuing is what makes room: wake waiting callers before the sinks run.
            self.room.wake_if_room(&self.stats);
            if last_tick.elapsed() >= TICK {
                self.assembler.expire_open_spans(Instant::now(), &mut out);
                last_tick = Instant::now();
            }
            self.assembler.flush_calls(&mut out);
            self.emit(&mut out);
            self.mark_sinks();
            self.each_sink(|s| s.flush());
            self.commits.wake();
            self.room.drained(drained, round.elapsed());
        }
    }

    /// Numbers a message that is waited for (ticketed) or measured (a probe), and hands it to
    /// the assembler.
    fn handle(&mut self, msg: Msg, out: &mut Vec<Output>) {
        match msg {
            Msg::Ticketed(inner, ticket) => {
                ticket.set(self.commits.next());
                self.handle(*inner, out);
            }
            Msg::Probe(inner) => {
                let (inner, at) = *inner;
                self.commits.probe(self.commits.next(), at);
                self.handle(inner, out);
            }
            other => self.assembler.handle(other, out),
        }
    }

    /// Tells the sinks which numbered messages what they were given belongs to.
    fn mark_sinks(&mut self) {
        let upto = self.commits.handled();
        for sink in &mut self.sinks {
            sink.mark(upto);
        }
    }

    fn stop(&mut self, out: &mut Vec<Output>) {
        self.room.close();
        self.assembler.flush_all_open(out);
        self.assembler.flush_calls(out);
        self.emit(out);
        self.mark_sinks();
        self.each_sink(|s| s.shutdown());
        self.commits.wake();
    }

    fn emit(&mut self, out: &mut Vec<Output>) {
        if let Some(r) = &mut self.redactor {
            for item in out.iter_mut() {
                match item {
                    Output::Started(s) => r.attributes(&mut s.attributes),
                    Output::Ended(s) => r.span(s),
                    Output::Event(e) => r.event(e),
                    Output::Metric(m) => r.attributes(&mut m.labels),
                }
            }
            let counts = r.take_counts();
            if !counts.is_empty()
                && let Ok(mut all) = self.stats.redactions.lock()
            {
                for (k, n) in counts {
                    *all.entry(k).or_insert(0) += n;
                }
            }
        }
        for item in out.drain(..) {
            for sink in &mut self.sinks {
                match &item {
                    Output::Started(s) => sink.span_started(s),
                    Output::Ended(s) => sink.span_ended(s),
                    Output::Event(e) => sink.event(e),
                    Output::Metric(m) => sink.metric(m),
                }
            }
        }
    }

    /// Calls `f` on every sink; failures are logged and counted, never stop the others.
    fn each_sink(&mut self, mut f: impl FnMut(&mut dyn Sink) -> Result<(), SinkError>) {
        for sink in &mut self.sinks {
            if let Err(e) = f(sink.as_mut()) {
                self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}");
            }
        }
    }
}
