//! What decoding and validation report about an object: problems, each
//! naming its field. Its own module so the decoder and the validator both
//! use it without importing each other.

use std::fmt;

/// One problem with one field. Also the shape of a Kubernetes `StatusCause`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Everything validation found about one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// The object is refused.
    pub errors: Vec<FieldError>,
    /// Accepted, but part of it is not acted on (each says what and why).
    pub warnings: Vec<FieldError>,
}
