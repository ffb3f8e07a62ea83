//! Record and replay: a session is the core's [`Config`] and its list of `(Time, Input)`; the
//! outputs it produced are recorded beside them so a replay can check it does the same again.
//! The encoding (JSON lines, one [`Record`] each) is the caller's: this crate has no JSON.

use serde::{Deserialize, Serialize};

use crate::{Config, Input, Output, PeerCore, Time};

/// One line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// First line: the configuration the core was made with.
    Config(Box<Config>),
    /// An input at a time.
    Input { t: Time, input: Input },
    /// An output, in the order `poll_output` gave them (after the input before it).
    Output(Output),
}

/// Where a replay parted from its recording.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    #[error("the recording does not start with its config")]
    NoConfig,
    #[error("output {index} differs: recorded {recorded}, replayed {replayed}")]
    Mismatch {
        index: usize,
        recorded: String,
        replayed: String,
    },
}

/// What a replay went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub inputs: usize,
    pub outputs: usize,
}

/// Re-runs a recorded session through a new core and checks that every output is the one that
/// was recorded, in the same order.
pub fn replay(records: impl IntoIterator<Item = Record>) -> Result<ReplayReport, ReplayError> {
    let mut records = records.into_iter();
    let Some(Record::Config(cfg)) = records.next() else {
        return Err(ReplayError::NoConfig);
    };
    let mut core = PeerCore::new(*cfg);
    let mut report = ReplayReport::default();
    let mismatch = |index: usize, recorded: Option<&Output>, replayed: Option<&Output>| {
        let show = |o: Option<&Output>| o.map_or("nothing".to_string(), |o| format!("{o:?}"));
        ReplayError::Mismatch {
            index,
            recorded: show(recorded),
            replayed: show(replayed),
        }
    };
    for rec in records {
        match rec {
            Record::Config(_) => return Err(ReplayError::NoConfig),
            Record::Input { t, input } => {
                if let Some(extra) = core.poll_output() {
                    return Err(mismatch(report.outputs, None, Some(&extra)));
                }
                core.handle(t, input);
                report.inputs += 1;
            }
            Record::Output(want) => {
                let got = core.poll_output();
                if got.as_ref() != Some(&want) {
                    return Err(mismatch(report.outputs, Some(&want), got.as_ref()));
                }
                report.outputs += 1;
            }
        }
    }
    match core.poll_output() {
        Some(extra) => Err(mismatch(report.outputs, None, Some(&extra))),
        None => Ok(report),
    }
}

/// Records a session while it runs: wrap every `handle` and `poll_output` of the core through
/// it and write out the records it yields.
#[derive(Debug, Default)]
pub struct Recorder {
    pending: Vec<Record>,
}

impl Recorder {
    /// Starts a recording of a core made with `cfg` (call before the first `poll_output`).
    pub fn new(cfg: &Config) -> Self {
        Recorder {
            pending: vec![Record::Config(Box::new(cfg.clone()))],
        }
    }
    pub fn input(&mut self, t: Time, input: &Input) {
        self.pending.push(Record::Input {
            t,
            input: input.clone(),
        });
    }
    pub fn output(&mut self, output: &Output) {
        self.pending.push(Record::Output(output.clone()));
    }
    /// Records not taken yet, oldest first.
    pub fn take(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.pending)
    }
}
