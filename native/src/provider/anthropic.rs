//! anthropic wire format.

use super::{Message, PreparedRequest, RequestParams};
use crate::secret::ApiKey;

pub fn prepare(_base: &str, _key: &ApiKey, _params: &RequestParams, _messages: &[Message]) -> PreparedRequest {
    todo!()
}
