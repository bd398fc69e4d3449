//! The Kinesis client of a source or sink: region, endpoint and credentials from its keys (the
//! standard AWS chain when none are set), over hyper with rustls on `ring`; and the sorting of
//! the service's errors into what is waited out and what stops the gateway.

use crate::config::Aws;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use std::time::Duration;

/// The SDK settings of `aws`'s region and credentials, with `endpoint` (a compatible service)
/// instead of AWS's.
async fn settings(aws: &Aws, endpoint: Option<&str>) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    match (&aws.region, endpoint) {
        (Some(r), _) => loader = loader.region(Region::new(r.clone())),
        // A compatible service needs some region for signing; and no instance-metadata lookup
        // (a call to a link-local address) for one.
        (None, Some(_)) => loader = loader.region(Region::new("us-east-1")),
        (None, None) => {}
    }
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    if let (Some(id), Some(secret)) = (&aws.access_key_id, &aws.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            id,
            secret.expose(),
            aws.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "sluice-config",
        ));
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return shared
            .into_builder()
            .region(Region::new("us-east-1"))
            .build();
    }
    shared
}

/// A Kinesis client for `aws`'s endpoint, region and credentials.
pub async fn connect(aws: &Aws) -> Client {
    Client::new(&settings(aws, aws.endpoint.as_deref()).await)
}

/// A DynamoDB client with `aws`'s region and credentials, at `endpoint` if set.
pub async fn dynamodb(aws: &Aws, endpoint: Option<&str>) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&settings(aws, endpoint).await)
}

/// Call `call` until it succeeds or fails for good: transient trouble (throttled, unreachable) is
/// waited out with backoff (200 ms to 5 s) while less than `limit` has passed since the first
/// call; `retrying` is told why and how long the wait is, to log it.
pub async fn patiently<T, Fut>(
    limit: Duration,
    mut retrying: impl FnMut(&str, Duration),
    mut call: impl FnMut() -> Fut,
) -> Result<T, Trouble>
where
    Fut: std::future::Future<Output = Result<T, Trouble>>,
{
    let began = std::time::Instant::now();
    let mut backoff = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times(),
    );
    loop {
        match call().await {
            Err(Trouble::Transient(why)) if began.elapsed() < limit => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                retrying(&why, wait);
                tokio::time::sleep(wait).await;
            }
            done => return done,
        }
    }
}

/// What to do about a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// Throttled, unreachable or a server error: wait and call again.
    Transient(String),
    /// The shard iterator is older than 5 minutes: get a new one where reading stands.
    Expired,
    /// The stream does not exist (or was deleted).
    NotFound(String),
    /// Wrong or missing credentials, or not allowed.
    Denied(String),
    /// Anything else: a bug or a bad request; stops the gateway.
    Fatal(String),
}

impl Trouble {
    /// What to tell the user, and what to check.
    pub fn explained(self) -> String {
        match self {
            Trouble::NotFound(why) => format!(
                "the stream does not exist ({why}); create it, or correct `stream`, `region` or `endpoint`"
            ),
            Trouble::Denied(why) => format!(
                "the credentials were refused ({why}); check `access_key_id` / `secret_access_key` or the AWS credential chain"
            ),
            Trouble::Transient(why) | Trouble::Fatal(why) => why,
            Trouble::Expired => "a shard iterator expired".into(),
        }
    }

    pub fn of<E>(e: &SdkError<E, HttpResponse>) -> Trouble
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match e {
            SdkError::ServiceError(s) => {
                let err = s.err();
                let code = err.code().unwrap_or("");
                let text = format!("{code}: {}", err.message().unwrap_or(""));
                match code {
                    "ExpiredIteratorException" => Trouble::Expired,
                    "ResourceNotFoundException" => Trouble::NotFound(text),
                    "ProvisionedThroughputExceededException"
                    | "LimitExceededException"
                    | "KMSThrottlingException"
                    | "ThrottlingException"
                    | "InternalFailure"
                    | "InternalFailureException"
                    | "ServiceUnavailable"
                    | "ResourceInUseException" => Trouble::Transient(text),
                    "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "AccessDeniedException"
                    | "IncompleteSignature"
                    | "MissingAuthenticationToken"
                    | "ExpiredTokenException" => Trouble::Denied(text),
                    _ if s.raw().status().is_server_error() => Trouble::Transient(text),
                    _ => Trouble::Fatal(text),
                }
            }
            SdkError::DispatchFailure(d) => {
                let connector = d.as_connector_error();
                let why = chain(connector.map(|c| c as &(dyn std::error::Error + 'static)));
                let network = connector.is_some_and(|c| c.is_io() || c.is_timeout());
                if !network && why.contains("credential") {
                    // The request was never sent: no credentials in the chain.
                    Trouble::Denied(why)
                } else {
                    Trouble::Transient(format!("cannot reach the endpoint: {why}"))
                }
            }
            SdkError::TimeoutError(_) => Trouble::Transient("the call timed out".into()),
            SdkError::ResponseError(_) => {
                Trouble::Transient(format!("a bad response: {}", chain(Some(e))))
            }
            SdkError::ConstructionFailure(_) => Trouble::Denied(format!(
                "the request cannot be made (credentials?): {}",
                chain(Some(e))
            )),
            _ => Trouble::Fatal(chain(Some(e))),
        }
    }
}

/// An error and its sources, one line.
fn chain(e: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut out = Vec::new();
    let mut cur = e;
    while let Some(err) = cur {
        let s = err.to_string();
        if out.last() != Some(&s) {
            out.push(s);
        }
        cur = err.source();
    }
    out.join(": ")
}
