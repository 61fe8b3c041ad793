//! Shell completion scripts and manual pages, generated from the same clap definition the
//! command line parses with, so they never drift from it.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::Cli;
use crate::Error;

/// Writes the completion script for `shell` (bash, zsh, fish, elvish, powershell).
pub(super) fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "continuum", out);
}

/// The manual page on stdout, or one page per command into `dir` (created when missing).
pub(super) fn man(dir: Option<&Path>) -> Result<(), Error> {
    let command = Cli::command();
    let usage = |path: &Path, e: std::io::Error| Error::Usage { message: format!("--dir {}: {e}", path.display()) };
    match dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .map_err(|e| Error::Internal { message: format!("render the manual page: {e}") })?;
            let _ = std::io::stdout().write_all(&out);
            Ok(())
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| usage(dir, e))?;
            clap_mangen::generate_to(command, dir).map_err(|e| usage(dir, e))
        }
    }
}
