//! `meshca certs`: the targets of Istio's `tools/certs/Makefile.selfsigned.mk` (`root-ca`,
//! `<name>-cacerts`, `<ns>-certs`, `clean`), done in one process.
//!
//! Everything is planned and checked before a key is generated: a run either writes every file
//! of every target, or writes nothing. Keys are generated in parallel on all cores.

#![forbid(unsafe_code)]

mod error;
mod plan;
mod settings;
mod target;

pub use error::CertsError;
pub use plan::{Outcome, Progress, Status, run};
pub use settings::Settings;
pub use target::Target;
