//! Who is served and how: the command line and the tenants file (read
//! into [`crate::config_model`]), the tenants built from it with their
//! budgets, certificates by SNI, and their reload.

pub mod budget;
pub(crate) mod cli;
pub mod config;
pub(crate) mod reload;
pub(crate) mod sni;
pub mod tenants;
