//! The S3 copy of the backup archives (`backup.s3`): upload, list, download. Never delete:
//! how long copies are kept is the bucket's lifecycle rule (and ddms' role may not delete).

use std::path::Path;

use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use secrecy::ExposeSecret;
use tokio::io::AsyncWriteExt;

use crate::config::BackupS3Config;

#[derive(Debug, thiserror::Error)]
#[error("S3 ({bucket}): {message}")]
pub struct S3Error {
    bucket: String,
    message: String,
}

#[derive(Debug, Clone)]
pub struct RemoteArchive {
    pub name: String,
    pub bytes: u64,
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3Store {
    /// `None` when no bucket is configured. Credentials: the configured key pair, else the
    /// AWS default chain (environment, profile files, web identity, ECS, the EC2 instance
    /// role the Terraform module `backup_bucket` grants).
    pub async fn from_config(config: &BackupS3Config) -> Option<S3Store> {
        let bucket = config.bucket.clone()?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(config.region.clone()));
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret.expose_secret(),
                None,
                None,
                "ddms.toml",
            ));
        }
        let shared = loader.load().await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.force_path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.trim_end_matches('/'));
        }
        Some(S3Store {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket,
            prefix: config.prefix.clone(),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn error(&self, what: &str, err: impl std::error::Error) -> S3Error {
        // The SDK's Display is terse ("service error"); its source chain says what happened.
        let mut message = format!("{what}: {err}");
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        S3Error {
            bucket: self.bucket.clone(),
            message,
        }
    }

    pub async fn upload(&self, name: &str, file: &Path) -> Result<(), S3Error> {
        let body = ByteStream::from_path(file)
            .await
            .map_err(|e| self.error(&format!("cannot read {}", file.display()), e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .content_type("application/gzip")
            .body(body)
            .send()
            .await
            .map_err(|e| self.error(&format!("cannot upload {name}"), e))?;
        Ok(())
    }

    /// The archives under the prefix (names matching `is_archive_name`).
    pub async fn list(&self) -> Result<Vec<RemoteArchive>, S3Error> {
        let mut archives = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("cannot list the archives", e))?;
            for object in page.contents() {
                let Some(name) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                if super::is_archive_name(name) {
                    archives.push(RemoteArchive {
                        name: name.to_string(),
                        bytes: object.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
        }
        Ok(archives)
    }

    /// Downloads an archive; `false` when the bucket has no such one.
    pub async fn download(&self, name: &str, into: &Path) -> Result<bool, S3Error> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
        {
            Ok(object) => object,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(false),
            Err(e) => return Err(self.error(&format!("cannot download {name}"), e)),
        };
        let mut body = object.body.into_async_read();
        let mut file = tokio::fs::File::create(into)
            .await
            .map_err(|e| self.error(&format!("cannot write {}", into.display()), e))?;
        tokio::io::copy(&mut body, &mut file)
            .await
            .map_err(|e| self.error(&format!("cannot download {name}"), e))?;
        file.flush()
            .await
            .map_err(|e| self.error(&format!("cannot write {}", into.display()), e))?;
        Ok(true)
    }
}
