//! Storage errors as one line that says what to check.

use opendal::ErrorKind;
use sluice_core::Error;

/// An OpenDAL error as a sluice error whose message says what to check.
pub fn io(e: opendal::Error) -> Error {
    Error::msg(describe(&e))
}

/// The deepest cause of an error, for connection failures ("Connection refused").
fn root_cause(e: &opendal::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// S3's error code in a response (`NoSuchBucket`, `SignatureDoesNotMatch`, ...), if any.
fn s3_code(text: &str) -> Option<&str> {
    const CODES: [&str; 7] = [
        "NoSuchBucket",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "SlowDown",
        "InvalidBucketName",
        "AuthorizationHeaderMalformed",
    ];
    CODES.into_iter().find(|c| text.contains(c))
}

pub fn describe(e: &opendal::Error) -> String {
    let full = format!("{e:?}");
    let code = s3_code(&full);
    match (e.kind(), code) {
        (_, Some("NoSuchBucket")) => {
            "the bucket does not exist (NoSuchBucket): create it, or fix the bucket in `path`"
                .into()
        }
        (_, Some(c @ ("SignatureDoesNotMatch" | "InvalidAccessKeyId" | "AccessDenied"))) => {
            format!(
                "access denied ({c}): check `access_key_id` and `secret_access_key` (or the AWS \
             credentials in the environment) and that they may write to the bucket"
            )
        }
        (ErrorKind::PermissionDenied, _) => format!(
            "access denied ({}): check the credentials and that they may write there",
            e.message()
        ),
        (ErrorKind::RateLimited, _) => format!(
            "the store kept throttling requests after every retry ({}): lower the load or raise \
             `max_retries`",
            e.message()
        ),
        (ErrorKind::Unexpected, _) if is_connection(&full) => format!(
            "cannot reach the endpoint ({}): check `endpoint` (or the host in `path`) and that \
             the store is running",
            root_cause(e)
        ),
        _ => format!("{} ({})", e.message(), root_cause(e)),
    }
}

fn is_connection(text: &str) -> bool {
    [
        "error sending request",
        "Connection refused",
        "connection refused",
        "dns error",
        "tcp connect error",
        "timed out",
    ]
    .iter()
    .any(|s| text.contains(s))
}
