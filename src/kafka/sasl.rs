//! SASL credentials re-read from their file while running: librdkafka
//! takes new PLAIN/SCRAM credentials in place
//! (`rd_kafka_sasl_set_credentials`), used at the next authentication, so
//! no client is re-created and nothing in flight is disturbed.

use crate::config::Config;
use crate::metrics::Telemetry;
use crate::reload::Watched;
use crate::secret::Secret;
use rdkafka::client::{Client, ClientContext};
use std::ffi::{CStr, CString};

/// A client whose credentials can be replaced.
pub(crate) type Target = Box<dyn Fn(&str, &Secret) -> Result<(), String> + Send + Sync>;

/// Gives `client` new SASL credentials.
pub(crate) fn set_credentials<C: ClientContext>(
    client: &Client<C>,
    username: &str,
    password: &Secret,
) -> Result<(), String> {
    let user = CString::new(username).map_err(|_| "the SASL username holds a NUL byte")?;
    let pass = CString::new(password.expose()).map_err(|_| "the SASL password holds a NUL byte")?;
    // SAFETY: `client.native_ptr()` is the live `rd_kafka_t` owned by
    // `client`, which the borrow keeps alive for the call. Both strings are
    // NUL-terminated and outlive the call; librdkafka copies them before
    // returning (rdkafka.h: "the new credentials will be used the next time
    // this client needs to authenticate"). The function is thread-safe.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_sasl_set_credentials(
            client.native_ptr(),
            user.as_ptr(),
            pass.as_ptr(),
        )
    };
    // The password's copy is overwritten before its memory is freed.
    let mut bytes = pass.into_bytes_with_nul();
    bytes.fill(0);
    std::hint::black_box(&bytes);
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: `err` is a non-null `rd_kafka_error_t` that this call owns;
    // its string is valid until the error is destroyed, and it is copied
    // first. It is destroyed exactly once.
    let msg = unsafe {
        let text = CStr::from_ptr(rdkafka::bindings::rd_kafka_error_string(err))
            .to_string_lossy()
            .into_owned();
        rdkafka::bindings::rd_kafka_error_destroy(err);
        text
    };
    Err(msg)
}

/// The SASL password file, watched by content.
pub(crate) struct Watch {
    file: std::path::PathBuf,
    username: String,
    watched: Watched,
    targets: Vec<Target>,
}

impl Watch {
    /// Watches `kafka.sasl_password_file`, when there is one.
    pub(crate) fn new(cfg: &Config, targets: Vec<Target>) -> Option<Watch> {
        let file = cfg.kafka.sasl_password_file.clone()?;
        let k = &cfg.kafka;
        let key = "sasl.username";
        let username = k
            .common
            .get(key)
            .or(k.consumer.get(key))
            .or(k.producer.get(key))
            .cloned()
            .unwrap_or_default();
        Some(Watch {
            watched: Watched::new(vec![file.clone()]),
            file,
            username,
            targets,
        })
    }

    /// Applies a changed password to every client.
    pub(crate) fn check(&self, telemetry: &Telemetry) {
        if !self.watched.changed() {
            return;
        }
        let result = Secret::from_file(&self.file)
            .map_err(|e| {
                format!(
                    "cannot read `kafka.sasl_password_file` {}: {}",
                    self.file.display(),
                    e.kind()
                )
            })
            .and_then(|p| {
                if p.is_empty() {
                    return Err(format!(
                        "`kafka.sasl_password_file` {} is empty",
                        self.file.display()
                    ));
                }
                self.targets.iter().try_for_each(|t| t(&self.username, &p))
            });
        telemetry.sasl_reloaded(result.err().as_deref());
    }
}
