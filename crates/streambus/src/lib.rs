//! The `streambus` binary as a library: server roles, the single-process
//! `dev` mode, layered settings and the CLI client commands.

pub mod cli;
pub mod dev;
pub mod roles;
pub mod settings;
