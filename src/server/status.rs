//! The one place where cairn's errors become gRPC statuses. Client mistakes
//! are answered with their message; internal failures are logged once here.

use tonic::{Code, Status};

use crate::error::Error;
use crate::proto::rpc;

/// The gRPC code REAPI prescribes for each kind of failure.
pub fn code_of(e: &Error) -> Code {
    match e {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Unavailable(_) => Code::Unavailable,
        other if other.is_disk_full() => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

fn message_of(e: &Error, code: Code) -> String {
    if code == Code::ResourceExhausted && !matches!(e, Error::ResourceExhausted(_)) {
        format!("the cache's disk is full ({e}); reads still work, writes resume when space returns")
    } else {
        e.to_string()
    }
}

/// Converts an error into the status returned for a whole call.
pub fn to_status(e: Error) -> Status {
    let code = code_of(&e);
    if code == Code::Internal {
        tracing::error!(error = %e, "request failed");
    }
    Status::new(code, message_of(&e, code))
}

/// Converts an error into a per-blob status inside a batch response.
pub fn to_rpc_status(e: &Error) -> rpc::Status {
    let code = code_of(e);
    if code == Code::Internal {
        tracing::error!(error = %e, "batch item failed");
    }
    rpc::Status { code: code as i32, message: message_of(e, code), details: Vec::new() }
}

/// The OK per-blob status.
pub fn ok_rpc_status() -> rpc::Status {
    rpc::Status { code: Code::Ok as i32, message: String::new(), details: Vec::new() }
}

/// Converts `Result<T, Error>` into `Result<T, Status>`.
pub trait IntoStatus<T> {
    fn status(self) -> Result<T, Status>;
}

impl<T> IntoStatus<T> for Result<T, Error> {
    fn status(self) -> Result<T, Status> {
        self.map_err(to_status)
    }
}
