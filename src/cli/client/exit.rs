//! How `wspair client` ends, and the exit code that says so.
//!
//! One enum so that every path out of the command picks a documented code, and the table in
//! `--help` is written next to the codes it describes.

use std::process::ExitCode;

/// What happened, as far as the exit code tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// stdin ended and everything was sent (acknowledged with `--v1`), or `--once` got what it
    /// waited for, or the server closed with 1000.
    Normal,
    /// A failure no other code names: an input line that does not decode, stdout closed, a
    /// server that broke the protocol or did not accept `wspair.v1`.
    Failure,
    /// The server answered the upgrade with an HTTP status.
    Refused,
    /// The server closed the connection with a code other than 1000.
    Closed,
    /// The connection could not be made, or was lost without a close frame.
    ConnectionFailed,
    /// `--once` got nothing within `--timeout`, or acknowledgements did not all come in time.
    Timeout,
    /// Bad usage (BSD `EX_USAGE`).
    Usage,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Normal => 0,
            Exit::Failure => 1,
            Exit::Refused => 2,
            Exit::Closed => 3,
            Exit::ConnectionFailed => 4,
            Exit::Timeout => 5,
            Exit::Usage => 64,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// The exit code table of `wspair client --help`; README.md has the same table.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
   0  normal end: stdin ended and everything was sent (with --v1: acknowledged), --once got
      what it waited for, or the server closed with 1000
   1  another failure: an input line that does not decode, stdout closed, a protocol error,
      or --v1 against a server that does not accept wspair.v1
   2  refused: the server answered the upgrade with an HTTP status (printed with its reason)
   3  closed: the server closed the connection with a code other than 1000 (printed with its
      reason); with --v1 only when another client took the role (4001), since the library
      reconnects after any other close
   4  connection failed: no connection within --connect-timeout, or it was lost without a
      close frame
   5  timeout: --once got nothing within --timeout, or with --v1 what was sent was not all
      acknowledged within --timeout after stdin ended
  64  bad usage";
