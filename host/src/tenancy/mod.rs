//! Who is served and how: the command line and the tenants file (one
//! configuration model), the tenants built from it, and their reload.

pub(crate) mod cli;
pub mod config;
pub mod config_model;
pub(crate) mod reload;
pub mod tenants;
