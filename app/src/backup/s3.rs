//! The S3 copy of the backup archives (`backup.s3`): upload, list, download, delete.

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
    /// `None` when no bucket is configured.
    pub fn from_config(config: &BackupS3Config) -> Result<Option<S3Store>, S3Error> {
        let Some(bucket) = config.bucket.clone() else {
            return Ok(None);
        };
        let credentials = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => {
                Credentials::new(id, secret.expose_secret(), None, None, "ddms.toml")
            }
            _ => match (
                std::env::var("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Ok(id), Ok(secret)) => Credentials::new(
                    id,
                    secret,
                    std::env::var("AWS_SESSION_TOKEN").ok(),
                    None,
                    "environment",
                ),
                _ => {
                    return Err(S3Error {
                        bucket,
                        message: "no credentials: set backup.s3.access_key_id and \
                                  backup.s3.secret_access_key, or AWS_ACCESS_KEY_ID and \
                                  AWS_SECRET_ACCESS_KEY"
                            .into(),
                    })
                }
            },
        };
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.force_path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.trim_end_matches('/'));
        }
        Ok(Some(S3Store {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket,
            prefix: config.prefix.clone(),
        }))
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

    pub async fn download(&self, name: &str, into: &Path) -> Result<(), S3Error> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map_err(|e| self.error(&format!("cannot download {name}"), e))?;
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
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> Result<(), S3Error> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map_err(|e| self.error(&format!("cannot delete {name}"), e))?;
        Ok(())
    }
}
