//! SNS's HTTP(S) push to replyd: `POST /v1/sns/NAME`, one endpoint per
//! `[sns.push.NAME]`, for the topics it lists.
//!
//! SNS signs every message it pushes, and that signature is the only
//! credential such a request has, so nothing is done for a message before
//! it is checked, in this order (the first failure answers 403 and
//! creates nothing):
//! 1. its topic is one the subscription lists;
//! 2. `SignatureVersion` is 1 (RSA with SHA-1) or 2 (RSA with SHA-256);
//! 3. `SigningCertURL` is `https://sns.REGION.amazonaws.com/….pem` for the
//!    topic's own region (`amazonaws.com.cn` in China), or under one of
//!    `sns.trusted_origins`: no other URL is ever fetched;
//! 4. the certificate there (fetched over that URL, through the SSRF
//!    guard for AWS's hosts; at most 16 KiB; cached by URL; at most a
//!    dozen new ones a minute, else 503) is an RSA certificate valid now;
//! 5. the signature verifies over the message's signed text
//!    ([`Envelope::signed_text`]).
//!
//! Then: a `Notification` becomes a job as a request from any broker does
//! (`brokers::ingress`; SNS's `MessageId` the duplicate key, so SNS's
//! redeliveries make one job) and is answered 204 only once the job is
//! durable (503 if it cannot be now: SNS delivers it again); one that
//! cannot be a job answers 400 with the reason (SNS's dead-letter queue,
//! if the subscription has one, keeps it) and its requester gets a
//! `rejected` reply. A `SubscriptionConfirmation` is confirmed by fetching
//! its `SubscribeURL` (held to the same hosts as the certificate); an
//! `UnsubscribeConfirmation` is logged, and nothing resubscribes.
//! Raw message delivery carries no signature and is refused: subscribe
//! the endpoint without it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine;
use replyd_core::outbox::Channel;
use url::Url;

use super::client::SnsBroker;
use crate::app::App;
use crate::brokers::ingress::{self, Refusal};
use crate::brokers::sqs::envelope::Envelope;
use crate::brokers::{Broker, Message};
use crate::config::brokers::sns::{PushConfig, SnsConfig, topic_arn};
use crate::config::brokers::sqs::SqsConfig;
use crate::error::ApiError;
use crate::webhooks::ssrf::{Guard, Resolver, SystemResolver, Vetting};

/// A signing certificate is at most this long.
const MAX_CERTIFICATE: usize = 16 * 1024;
/// Certificates kept (by URL); SNS uses one per region at a time.
const MAX_CACHED: usize = 64;
/// How long a certificate that could not be had is not asked for again.
const FAILURE_KEPT: Duration = Duration::from_secs(60);
/// Fetches (certificates, confirmations) at once, for all subscriptions.
const MAX_FETCHES: usize = 4;
/// Certificates fetched per minute at most, for all subscriptions. SNS
/// signs with one certificate per region for months: a stream of new
/// `SigningCertURL`s is a stranger making replyd call out (anything on
/// the topic region's SNS host passes the URL check), not SNS.
const FETCHES_PER_MINUTE: u32 = 12;
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the push endpoints share: their configuration, the certificates
/// seen, and how replies to refused requests leave.
pub struct Push {
    config: SnsConfig,
    /// `sns.trusted_origins`, as `Url::origin` serializes them.
    trusted: Vec<String>,
    /// Calls to AWS's hosts: every address vetted by the SSRF guard.
    guarded: reqwest::Client,
    /// Calls to the operator's trusted origins.
    direct: reqwest::Client,
    certificates: std::sync::Mutex<HashMap<String, Cached>>,
    fetches: tokio::sync::Semaphore,
    /// This minute's start and the certificates fetched in it.
    budget: std::sync::Mutex<(Instant, u32)>,
    replies: SnsBroker,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push").finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Cached {
    /// The certificate's public key (DER `RSAPublicKey`).
    Key(Arc<[u8]>),
    /// It could not be had, for this reason, until then.
    Failed(Instant, ApiError),
}

/// Where a URL a message names may be fetched from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// AWS's SNS host of the topic's region.
    Aws,
    /// One of `sns.trusted_origins`.
    Trusted,
}

fn forbidden(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "sns-signature", detail)
}

fn unavailable(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sns-unavailable", detail)
}

impl Push {
    /// The push endpoints of `[sns]` (on `[sqs]`'s settings), resolving
    /// AWS's names with the system.
    pub fn new(config: &SnsConfig, aws: &SqsConfig) -> Push {
        Push::with_resolver(config, aws, Arc::new(SystemResolver))
    }

    pub fn with_resolver(config: &SnsConfig, aws: &SqsConfig, resolver: Arc<dyn Resolver>) -> Push {
        let agent = concat!("replyd-sns/", env!("CARGO_PKG_VERSION"));
        let guarded = crate::outbound::client()
            .timeout(FETCH_TIMEOUT)
            .user_agent(agent)
            .https_only(true)
            .dns_resolver(Arc::new(Vetting {
                guard: Guard::default(),
                resolver,
            }))
            .build()
            // A TLS backend is compiled in; nothing else can fail here.
            .expect("an HTTPS client");
        let direct = crate::outbound::client()
            .timeout(FETCH_TIMEOUT)
            .user_agent(agent)
            .build()
            .expect("an HTTP client");
        Push {
            trusted: config
                .trusted_origins
                .iter()
                .filter_map(|o| Url::parse(o).ok())
                .map(|u| u.origin().ascii_serialization())
                .collect(),
            config: config.clone(),
            guarded,
            direct,
            certificates: std::sync::Mutex::new(HashMap::new()),
            fetches: tokio::sync::Semaphore::new(MAX_FETCHES),
            budget: std::sync::Mutex::new((Instant::now(), 0)),
            replies: SnsBroker::new(aws),
        }
    }

    /// Where `raw` (a `SigningCertURL` or `SubscribeURL` of a message of a
    /// topic in `partition` and `region`) may be fetched from, or why not.
    pub fn vet(&self, raw: &str, partition: &str, region: &str) -> Result<(Url, Origin), String> {
        let url = Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{raw:?} carries credentials"));
        }
        if self.trusted.contains(&url.origin().ascii_serialization()) {
            return Ok((url, Origin::Trusted));
        }
        let domain = if partition == "aws-cn" {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        let host = format!("sns.{region}.{domain}");
        let aws = url.scheme() == "https"
            && url.port().is_none()
            && url
                .host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(&host));
        if aws {
            Ok((url, Origin::Aws))
        } else {
            Err(format!(
                "{raw:?} is not on https://{host} (the topic's region) or a trusted origin"
            ))
        }
    }

    /// Takes one message pushed to subscription `name`.
    pub async fn receive(&self, app: &App, name: &str, body: &[u8]) -> Result<Answer, ApiError> {
        let Some(sub) = self.config.push.get(name) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "no SNS push subscription of that name",
            ));
        };
        let e: Envelope = serde_json::from_slice(body).map_err(|e| {
            forbidden(format!(
                "not a signed SNS message ({e}); raw message delivery is not taken, as it carries no signature"
            ))
        })?;
        if !sub.topics.contains(&e.topic_arn) {
            return Err(forbidden(format!(
                "topic {:?} may not push to this subscription",
                e.topic_arn
            )));
        }
        self.verify(&e).await?;
        match e.r#type.as_str() {
            "Notification" => self.notification(app, sub, e).await,
            "SubscriptionConfirmation" => self.confirm(&e).await,
            "UnsubscribeConfirmation" => {
                tracing::warn!(subscription = %name, topic = %e.topic_arn, "SNS says the subscription was deleted; it is not confirmed again");
                Ok(Answer::Done)
            }
            other => Err(ApiError::bad_request(format!(
                "an SNS message of type {other:?} is not one replyd takes"
            ))),
        }
    }

    /// Checks `e`'s signature (see the module's steps 2 to 5).
    async fn verify(&self, e: &Envelope) -> Result<(), ApiError> {
        use ring::signature::{
            RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256,
            UnparsedPublicKey, VerificationAlgorithm,
        };
        let algorithm: &'static dyn VerificationAlgorithm = match e.signature_version.as_str() {
            "1" => &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &RSA_PKCS1_2048_8192_SHA256,
            v => {
                return Err(forbidden(format!(
                    "SignatureVersion {v:?}: only 1 and 2 are known"
                )));
            }
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(e.signature.as_bytes())
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| forbidden("the message has no signature (base64)"))?;
        let Some((partition, region, ..)) = topic_arn(&e.topic_arn) else {
            return Err(forbidden("TopicArn is not a topic ARN"));
        };
        let (url, origin) = self
            .vet(&e.signing_cert_url, partition, region)
            .map_err(|why| forbidden(format!("SigningCertURL: {why}")))?;
        if !url.path().ends_with(".pem") {
            return Err(forbidden("SigningCertURL does not name a .pem certificate"));
        }
        let key = self.key(&url, origin).await?;
        UnparsedPublicKey::new(algorithm, &*key)
            .verify(e.signed_text().as_bytes(), &signature)
            .map_err(|_| forbidden("the signature does not verify"))
    }

    /// The public key of the certificate at `url`: cached, else fetched.
    async fn key(&self, url: &Url, origin: Origin) -> Result<Arc<[u8]>, ApiError> {
        let cached = || -> Option<Result<Arc<[u8]>, ApiError>> {
            match self.lock().get(url.as_str())? {
                Cached::Key(k) => Some(Ok(k.clone())),
                Cached::Failed(until, e) if *until > Instant::now() => Some(Err(e.clone())),
                Cached::Failed(..) => None,
            }
        };
        if let Some(k) = cached() {
            return k;
        }
        let _permit = tokio::time::timeout(FETCH_TIMEOUT, self.fetches.acquire())
            .await
            .map_err(|_| unavailable("too many SNS certificates are being fetched; try again"))?
            .map_err(|_| unavailable("shutting down"))?;
        // Another request may have fetched it meanwhile.
        if let Some(k) = cached() {
            return k;
        }
        self.spend()?;
        let got = self.fetch_key(url, origin).await;
        let entry = match &got {
            Ok(k) => Cached::Key(k.clone()),
            Err(e) => Cached::Failed(Instant::now() + FAILURE_KEPT, e.clone()),
        };
        let mut certificates = self.lock();
        if certificates.len() >= MAX_CACHED {
            // Failures go first: junk URLs must not push SNS's real
            // certificate out.
            certificates.retain(|_, c| matches!(c, Cached::Key(_)));
            if certificates.len() >= MAX_CACHED {
                certificates.clear();
            }
        }
        certificates.insert(url.to_string(), entry);
        got
    }

    /// Takes one certificate fetch from this minute's budget, or says to
    /// come back later (SNS delivers again).
    fn spend(&self) -> Result<(), ApiError> {
        let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if b.0.elapsed() >= Duration::from_secs(60) {
            *b = (Instant::now(), 0);
        }
        if b.1 >= FETCHES_PER_MINUTE {
            let mut e = unavailable("too many new SNS signing certificates this minute; try again");
            e.retry_after = Some(60u64.saturating_sub(b.0.elapsed().as_secs()).max(1));
            return Err(e);
        }
        b.1 += 1;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.certificates.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn client(&self, origin: Origin) -> &reqwest::Client {
        match origin {
            Origin::Aws => &self.guarded,
            Origin::Trusted => &self.direct,
        }
    }

    async fn fetch_key(&self, url: &Url, origin: Origin) -> Result<Arc<[u8]>, ApiError> {
        let mut r = self
            .client(origin)
            .get(url.clone())
            .send()
            .await
            .map_err(|e| unavailable(format!("cannot fetch the signing certificate: {e}")))?;
        if r.status().is_server_error() {
            return Err(unavailable(format!(
                "the signing certificate's host answered {}",
                r.status()
            )));
        }
        if !r.status().is_success() {
            return Err(forbidden(format!(
                "no signing certificate at SigningCertURL (HTTP {})",
                r.status()
            )));
        }
        let mut pem = Vec::new();
        while let Some(chunk) = r
            .chunk()
            .await
            .map_err(|e| unavailable(format!("cannot fetch the signing certificate: {e}")))?
        {
            pem.extend_from_slice(&chunk);
            if pem.len() > MAX_CERTIFICATE {
                return Err(forbidden("the signing certificate is too long"));
            }
        }
        public_key(&pem).map_err(|why| forbidden(format!("the signing certificate: {why}")))
    }

    /// Confirms a subscription by fetching its `SubscribeURL`.
    async fn confirm(&self, e: &Envelope) -> Result<Answer, ApiError> {
        let raw = e.subscribe_url.as_deref().unwrap_or("");
        let (partition, region) = topic_arn(&e.topic_arn)
            .map(|(p, r, ..)| (p, r))
            .unwrap_or_default();
        let (url, origin) = self
            .vet(raw, partition, region)
            .map_err(|why| forbidden(format!("SubscribeURL: {why}")))?;
        let _permit = tokio::time::timeout(FETCH_TIMEOUT, self.fetches.acquire())
            .await
            .map_err(|_| unavailable("too many SNS calls at once; try again"))?
            .map_err(|_| unavailable("shutting down"))?;
        let r = self
            .client(origin)
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(format!("cannot confirm the subscription: {e}")))?;
        if !r.status().is_success() {
            return Err(unavailable(format!(
                "confirming the subscription: SNS answered {}",
                r.status()
            )));
        }
        tracing::info!(topic = %e.topic_arn, "SNS push subscription confirmed");
        Ok(Answer::Confirmed)
    }

    /// A notification becomes a job (durable when this returns).
    async fn notification(
        &self,
        app: &App,
        sub: &PushConfig,
        e: Envelope,
    ) -> Result<Answer, ApiError> {
        let Some(n) = e.into_notification() else {
            return Err(ApiError::bad_request("not an SNS notification"));
        };
        let message: Message = n.into_message();
        let settings = ingress::Settings {
            tenant: replyd_core::Tenant(sub.tenant.clone()),
            default_queue: sub.queue.clone(),
            dead_letter: String::new(),
            prefetch: 1,
        };
        match ingress::accept(app, Channel::Sns, &settings, &message).await {
            Ok(()) => Ok(Answer::Accepted),
            Err(Refusal::Reject(reason)) => {
                ingress::reject_reply(&self.replies as &dyn Broker, &message, &reason).await;
                Err(ApiError::bad_request(reason))
            }
            Err(Refusal::Later(reason)) => Err(unavailable(reason)),
        }
    }
}

/// What a message pushed came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A notification's job is durable.
    Accepted,
    /// A subscription is confirmed.
    Confirmed,
    /// Nothing more to do.
    Done,
}

/// The RSA public key (DER `RSAPublicKey`, as ring reads it) of a PEM
/// certificate valid now.
pub fn public_key(pem: &[u8]) -> Result<Arc<[u8]>, String> {
    use x509_parser::public_key::PublicKey;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !cert.validity().is_valid() {
        return Err("it is not valid now".into());
    }
    let spki = cert.public_key();
    if !matches!(spki.parsed(), Ok(PublicKey::RSA(_))) {
        return Err("its key is not RSA".into());
    }
    Ok(Arc::from(&spki.subject_public_key.data[..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// A resolver that answers from a table and records what it was
    /// asked: no test looks up or reaches a real address.
    #[derive(Default)]
    struct Table {
        answers: HashMap<String, Vec<SocketAddr>>,
        asked: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Resolver for Table {
        async fn lookup(&self, host: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
            self.asked.lock().unwrap().push(host.to_string());
            Ok(self.answers.get(host).cloned().unwrap_or_default())
        }
    }

    fn push(trusted: &[&str], resolver: Arc<dyn Resolver>) -> Push {
        let config = SnsConfig {
            trusted_origins: trusted.iter().map(|s| s.to_string()).collect(),
            ..SnsConfig::default()
        };
        Push::with_resolver(&config, &SqsConfig::default(), resolver)
    }

    /// Only AWS's SNS host of the topic's own region, over HTTPS on its
    /// default port, or an operator's trusted origin: every other URL a
    /// forger might name is refused before anything is fetched.
    #[test]
    fn only_the_topics_sns_host_or_a_trusted_origin_is_fetched() {
        let p = push(&["http://127.0.0.1:4566"], Arc::new(Table::default()));
        let aws = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem";
        assert_eq!(p.vet(aws, "aws", "us-east-1").unwrap().1, Origin::Aws);
        assert_eq!(
            p.vet(
                "https://SNS.us-east-1.amazonaws.com/c.pem",
                "aws",
                "us-east-1"
            )
            .unwrap()
            .1,
            Origin::Aws
        );
        assert_eq!(
            p.vet(
                "https://sns.cn-north-1.amazonaws.com.cn/c.pem",
                "aws-cn",
                "cn-north-1"
            )
            .unwrap()
            .1,
            Origin::Aws
        );
        assert_eq!(
            p.vet("http://127.0.0.1:4566/c.pem", "aws", "us-east-1")
                .unwrap()
                .1,
            Origin::Trusted
        );
        for bad in [
            // Another region than the topic's.
            "https://sns.eu-west-1.amazonaws.com/c.pem",
            // Not HTTPS, another port, credentials.
            "http://sns.us-east-1.amazonaws.com/c.pem",
            "https://sns.us-east-1.amazonaws.com:8443/c.pem",
            "https://user:pw@sns.us-east-1.amazonaws.com/c.pem",
            // Look-alikes.
            "https://sns.us-east-1.amazonaws.com.evil.test/c.pem",
            "https://evil.test/sns.us-east-1.amazonaws.com/c.pem",
            "https://evilsns.us-east-1.amazonaws.com/c.pem",
            "https://s3.amazonaws.com/c.pem",
            "https://169.254.169.254/latest/meta-data",
            // A trusted origin on another port or scheme.
            "http://127.0.0.1:4567/c.pem",
            "https://127.0.0.1:4566/c.pem",
            "not a url",
        ] {
            assert!(p.vet(bad, "aws", "us-east-1").is_err(), "{bad}");
        }
        assert!(
            p.vet(aws, "aws-cn", "us-east-1").is_err(),
            "China's partition is on amazonaws.com.cn"
        );
    }

    /// AWS's host is reached only at addresses the SSRF guard passes: a
    /// name that resolves to a private, loopback or metadata address is
    /// refused (the table resolver answers; nothing connects).
    #[tokio::test]
    async fn aws_hosts_are_reached_only_at_public_addresses() {
        let host = "sns.us-east-1.amazonaws.com";
        for addr in ["127.0.0.1:443", "10.0.0.7:443", "169.254.169.254:443"] {
            let table = Arc::new(Table {
                answers: HashMap::from([(host.to_string(), vec![addr.parse().unwrap()])]),
                ..Table::default()
            });
            let p = push(&[], table.clone());
            let url = Url::parse(&format!("https://{host}/c.pem")).unwrap();
            let e = p.key(&url, Origin::Aws).await.unwrap_err();
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "{addr}: {e:?}");
            assert_eq!(*table.asked.lock().unwrap(), [host], "{addr}");
            // The failure is kept for a while: no second lookup.
            p.key(&url, Origin::Aws).await.unwrap_err();
            assert_eq!(table.asked.lock().unwrap().len(), 1, "{addr}");
        }
    }

    /// A stranger who names a new certificate URL on the topic region's
    /// SNS host in every message makes replyd fetch at most a dozen a
    /// minute; then the answer is 503 without a lookup.
    #[tokio::test]
    async fn certificates_fetched_are_bounded_per_minute() {
        let table = Arc::new(Table::default());
        let p = push(&[], table.clone());
        for i in 0..FETCHES_PER_MINUTE {
            let url = Url::parse(&format!("https://sns.us-east-1.amazonaws.com/{i}.pem")).unwrap();
            let e = p.key(&url, Origin::Aws).await.unwrap_err();
            assert!(!e.detail.contains("too many"), "{e:?}");
        }
        let asked = table.asked.lock().unwrap().len();
        assert_eq!(asked, FETCHES_PER_MINUTE as usize);
        let url = Url::parse("https://sns.us-east-1.amazonaws.com/one-more.pem").unwrap();
        let e = p.key(&url, Origin::Aws).await.unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.detail.contains("too many"), "{e:?}");
        assert!(e.retry_after.is_some());
        assert_eq!(table.asked.lock().unwrap().len(), asked, "no lookup");
    }

    #[test]
    fn what_is_not_an_rsa_certificate_has_no_key() {
        assert!(public_key(b"not pem").is_err());
        assert!(
            public_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}
