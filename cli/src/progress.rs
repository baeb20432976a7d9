//! The migration progress bar: a tracing layer that reads the library's
//! per-migration events (`target: dbmanager::migrate`, field `progress` =
//! `start` / `running` / `done`) and draws one bar on stderr, only when
//! stderr is a terminal. Reading the events the library logs anyway keeps
//! the library free of a progress API and the bar in step with the log.

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;

/// The bar, hidden until a migration starts.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar drawn on stderr when it is a terminal, else never drawn.
    pub fn new(terminal: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(0),
            if terminal {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Progress { bar }
    }
}

/// What one event says.
#[derive(Default)]
struct Fields {
    progress: Option<String>,
    index: Option<u64>,
    total: Option<u64>,
    version: Option<i64>,
    name: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "progress" => self.progress = Some(value.to_string()),
            "name" => self.name = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "index" => self.index = Some(value),
            "total" => self.total = Some(value),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "version" => self.version = Some(value),
            "index" => self.index = u64::try_from(value).ok(),
            "total" => self.total = u64::try_from(value).ok(),
            _ => {}
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber> Layer<S> for Progress {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "dbmanager::migrate" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let (Some(progress), Some(index), Some(total)) =
            (fields.progress.as_deref(), fields.index, fields.total)
        else {
            return;
        };
        let label = format!(
            "{}_{}",
            fields.version.unwrap_or_default(),
            fields.name.unwrap_or_default()
        );
        match progress {
            "start" => {
                if self.bar.length() != Some(total) {
                    self.bar.set_length(total);
                    self.bar.reset_elapsed();
                    self.bar.enable_steady_tick(Duration::from_millis(200));
                }
                self.bar.set_position(index.saturating_sub(1));
                self.bar.set_message(label);
            }
            "done" => {
                self.bar.set_position(index);
                if index >= total {
                    self.bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }
}

/// Log lines on stderr, written with the bar lifted so they do not tear it.
impl<'a> MakeWriter<'a> for Progress {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            bar: self.bar.clone(),
        }
    }
}

/// One write of a formatted log line, the bar suspended around it.
pub struct LineWriter {
    bar: ProgressBar,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bar.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
