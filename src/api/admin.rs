//! `oip.v1.AdminService`: dead letters (list, replay, discard) for administrators.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::access::Access;
use crate::domain::time::{now_millis, to_rfc3339};
use crate::error::ApiError;
use crate::identity::Principal;
use crate::proto::{self, admin_service_server::AdminService};
use crate::store::{DeadLetterAction, DeadLetterSelection, Destination, Store};

#[derive(Clone)]
pub struct AdminApi {
    pub access: Access,
    pub store: Arc<dyn Store>,
}

fn destination(s: &str) -> Result<Option<Destination>, ApiError> {
    match s {
        "" => Ok(None),
        "social-security" => Ok(Some(Destination::SocialSecurity)),
        "tax" => Ok(Some(Destination::Tax)),
        other => Err(ApiError::InvalidArgument(format!(
            "destination must be social-security, tax or empty, not {other:?}"
        ))),
    }
}

impl AdminApi {
    /// The calling administrator's identity URI.
    async fn admin<T>(&self, req: &Request<T>) -> Result<String, ApiError> {
        let principal = Principal::of_request(req)?;
        self.access.admin(&principal, now_millis()).await?;
        Ok(principal.uri)
    }

    async fn act(
        &self,
        req: Request<proto::DeadLetterSelection>,
        action: DeadLetterAction,
    ) -> Result<Response<proto::DeadLetterActionResponse>, Status> {
        let by = self.admin(&req).await?;
        let r = req.into_inner();
        let by_seqs = !r.seqs.is_empty();
        if r.all == by_seqs {
            return Err(ApiError::InvalidArgument(
                "select dead letters by seqs or with all = true (exactly one)".into(),
            )
            .into());
        }
        let selection = DeadLetterSelection {
            destination: destination(&r.destination)?,
            seqs: r.seqs,
        };
        let changed = self
            .store
            .handle_dead_letters(&selection, action, &by, now_millis())
            .await
            .map_err(ApiError::from)?;
        tracing::info!(admin = %by, ?action, changed, "dead letters handled");
        Ok(Response::new(proto::DeadLetterActionResponse { changed }))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_dead_letters(
        &self,
        req: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let after = match r.page_token.as_str() {
            "" => 0,
            t => t
                .parse()
                .map_err(|_| ApiError::InvalidArgument("unknown page_token".into()))?,
        };
        let limit = match r.page_size {
            0 => 100,
            n => n.min(1000),
        };
        let rows = self
            .store
            .dead_letters(destination(&r.destination)?, after, limit)
            .await
            .map_err(ApiError::from)?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() == limit as usize => last.seq.to_string(),
            _ => String::new(),
        };
        let dead_letters = rows
            .into_iter()
            .map(|d| proto::DeadLetter {
                seq: d.seq,
                destination: d.destination,
                record_key: d.record_key,
                idempotency_key: d.idempotency_key,
                attempts: d.attempts,
                last_error: d.last_error.unwrap_or_default(),
                created_at: to_rfc3339(d.created_at),
            })
            .collect();
        Ok(Response::new(proto::ListDeadLettersResponse {
            dead_letters,
            next_page_token,
        }))
    }

    async fn replay_dead_letters(
        &self,
        req: Request<proto::DeadLetterSelection>,
    ) -> Result<Response<proto::DeadLetterActionResponse>, Status> {
        self.act(req, DeadLetterAction::Replay).await
    }

    async fn discard_dead_letters(
        &self,
        req: Request<proto::DeadLetterSelection>,
    ) -> Result<Response<proto::DeadLetterActionResponse>, Status> {
        self.act(req, DeadLetterAction::Discard).await
    }
}
