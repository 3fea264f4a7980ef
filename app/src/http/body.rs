//! Request bodies. Every JSON body of the API is an object; axum's `Json` alone would also take
//! an array for a struct (serde reads a struct from a sequence of its fields in order), so
//! `PUT /api/system/config` with `[null, null]` answered 200 and `["name", "secret"]` logged in.
//! [`JsonBody`] takes axum's `Json` (its 400, 413 and 415 answers stay), then refuses anything
//! but an object with 422 before the handler's type reads it.

use axum::extract::{FromRequest, OptionalFromRequest, Request};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ApiError;

/// A JSON object body read into `T`; 422 naming `body` when it is another JSON value or does
/// not fit `T`.
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = <axum::Json<Value> as FromRequest<S>>::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        into_object_of(value)
            .map(JsonBody)
            .map_err(IntoResponse::into_response)
    }
}

/// An optional body (`Option<JsonBody<T>>`): `None` without a `Content-Type`, as axum's.
impl<T, S> OptionalFromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let value = <axum::Json<Value> as OptionalFromRequest<S>>::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        value
            .map(|axum::Json(value)| into_object_of(value).map(JsonBody))
            .transpose()
            .map_err(IntoResponse::into_response)
    }
}

fn into_object_of<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::Validation {
            field: "body".into(),
            message: format!("must be a JSON object, not {}", kind_of(&value)),
        });
    }
    serde_json::from_value(value).map_err(|e| ApiError::Validation {
        field: "body".into(),
        message: e.to_string(),
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Login {
        username: String,
        password: String,
    }

    #[test]
    fn an_object_is_read_and_anything_else_is_refused_naming_the_body() {
        let login: Login = into_object_of(json!({"username": "a", "password": "b"})).unwrap();
        assert_eq!(login.username, "a");
        // serde alone reads this array as a Login.
        assert!(serde_json::from_value::<Login>(json!(["a", "b"])).is_ok());
        for other in [
            json!(["a", "b"]),
            json!(null),
            json!(1),
            json!("a"),
            json!(true),
        ] {
            match into_object_of::<Login>(other.clone()) {
                Err(ApiError::Validation { field, message }) => {
                    assert_eq!(field, "body");
                    assert!(message.starts_with("must be a JSON object"), "{message}");
                }
                result => panic!("{other} gave {result:?}"),
            }
        }
        match into_object_of::<Login>(json!({"username": "a"})) {
            Err(ApiError::Validation { field, message }) => {
                assert_eq!(field, "body");
                assert!(message.contains("password"), "{message}");
            }
            result => panic!("{result:?}"),
        }
    }
}
