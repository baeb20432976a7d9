//! `dbmanager config show`: the effective configuration, where each value
//! came from, secrets redacted.

use std::process::ExitCode;

use dbmanager::ConfigLoader;

pub fn show(loader: &ConfigLoader, json: bool) -> dbmanager::Result<ExitCode> {
    let settings = loader.explain()?;
    if json {
        match serde_json::to_string_pretty(&settings) {
            Ok(text) => crate::emit(&text),
            Err(e) => eprintln!("dbmanager: error: cannot print the settings: {e}"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Align the sources, within reason: long URLs should not push every
    // comment off the screen.
    let width = settings
        .iter()
        .map(|s| s.key.len() + s.value.len() + 3)
        .filter(|w| *w <= 64)
        .max()
        .unwrap_or(0);
    for s in settings {
        let line = format!("{} = {}", s.key, s.value);
        crate::emit(&format!("{line:width$}  # {}", s.source));
    }
    Ok(ExitCode::SUCCESS)
}
