//! What the Grand Challenge platform accepts, decided on this machine.
//!
//! The platform judges what it receives: a value against its socket kind's JSON schema, an image
//! upload by what its importer (panimg) can read, a DICOM file by whether it may hold patient data at
//! all. This crate makes those judgements locally, with the platform's own rules and words, so that
//! the agent refuses a case before sending a byte and the sandbox answers as the platform would. It
//! does no network I/O and knows nothing of folders, journals or HTTP.
//!
//! - [`kinds`]      the socket kinds: API labels, internal codes, families, super kinds.
//! - [`schema`]     JSON value validation by socket kind, with python-jsonschema's first error.
//! - [`imaging`]    image import as panimg judges it: which uploads make one image, which fail.
//! - [`deidentify`] DICOM de-identification with the platform's procedure, streamed file to file.
//! - [`samples`]    tiny but real medical images (MetaImage, NIfTI, DICOM, TIFF) from a seed.
//! - [`corpus`]     good and broken image uploads in every format, to check [`imaging`] against panimg.
//!
//! ```
//! use gc_content::schema;
//! use serde_json::json;
//!
//! assert!(schema::validate_value("Integer", &json!(3)).is_ok());
//! let refused = schema::validate_value("Integer", &json!("three")).unwrap_err();
//! assert!(refused.contains("is not of type 'integer'"), "{refused}");
//! ```

pub mod corpus;
pub mod deidentify;
pub mod imaging;
pub mod kinds;
pub mod samples;
pub mod schema;
