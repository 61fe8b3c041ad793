//! `continuum status --watch`: the status again every `--interval` until Ctrl-C. On a terminal
//! each frame overwrites the previous one in place (cursor home, each line cleared to its end,
//! the rest of the screen cleared), so nothing scrolls; into a pipe or file each frame is
//! printed after the last one with a time line, and with `--json` one compact JSON line per
//! refresh. An unreachable daemon is shown and retried; a refused token ends the command.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use super::{ApiClient, render_status};
use crate::Error;
use crate::api::Status;

/// ANSI: cursor to the top left corner; clear to the end of the line; clear below the cursor.
const HOME: &str = "\x1b[H";
const CLEAR_LINE: &str = "\x1b[K";
const CLEAR_BELOW: &str = "\x1b[J";

pub(super) async fn status(api: &ApiClient, json: bool, interval: Duration) -> Result<(), Error> {
    if interval.is_zero() {
        return Err(Error::Usage { message: "--interval must be greater than zero".into() });
    }
    let in_place = !json && std::io::stdout().is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let answer = api.get::<Status>("/v1/status").await;
        if let Err(Error::Api { status: 401 | 403, .. }) = &answer {
            return answer.map(|_| ());
        }
        let frame = match (&answer, json) {
            (Ok(status), true) => serde_json::to_string(status).expect("API types serialize") + "\n",
            (Ok(status), false) => render_status(status),
            (Err(e), true) => serde_json::json!({ "error": crate::error_chain(e) }).to_string() + "\n",
            (Err(e), false) => format!("error: {}\n", crate::error_chain(e)),
        };
        let header = if json {
            String::new()
        } else {
            format!(
                "every {} · {} · Ctrl-C stops\n",
                humantime::format_duration(interval),
                humantime::format_rfc3339_seconds(SystemTime::now())
            )
        };
        let mut out = std::io::stdout().lock();
        let written = if in_place {
            write!(out, "{}", paint_in_place(&(header + &frame)))
        } else if json {
            write!(out, "{frame}")
        } else {
            writeln!(out, "{header}{frame}")
        };
        // Stdout closed (e.g. `| head`): nothing left to show to.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        drop(out);
        tokio::select! {
            _ = &mut ctrl_c => {
                if in_place {
                    println!();
                }
                return Ok(());
            }
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One frame drawn over the previous one: home, every line cleared past its end, and whatever
/// a longer previous frame left below cleared.
fn paint_in_place(frame: &str) -> String {
    let mut out = String::from(HOME);
    for line in frame.lines() {
        out.push_str(line);
        out.push_str(CLEAR_LINE);
        out.push('\n');
    }
    out.push_str(CLEAR_BELOW);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_overwrites_the_last_one() {
        let painted = paint_in_place("one\ntwo\n");
        assert_eq!(painted, "\x1b[Hone\x1b[K\ntwo\x1b[K\n\x1b[J");
    }
}
