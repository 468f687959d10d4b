//! The node-to-node wire types of the `shoal` binary, compiled here from the
//! binary's own source files (the root package has no library target), so the
//! fuzz targets decode exactly the types the daemon decodes.

#![allow(dead_code)]

#[path = "../../src/wire.rs"]
pub mod wire;

#[path = "../../src/mesh/table.rs"]
pub mod mesh_table;

pub mod mesh {
    pub use crate::mesh_table as table;
}

/// The service API's edge: spec document to replicated spec, with validation.
#[path = "../../src/services.rs"]
pub mod services;
