//! regimage: a private container registry appliance from one site config.
//!
//! Data flows one way: config -> the appliance's files and steps -> an output
//! (a directory tree, a cloud-config, or a live host at first boot).

pub mod build;
pub mod bundle;
pub mod cli;
pub mod cloudinit;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod distro;
pub mod error;
pub mod fetch_image;
pub mod firstboot;
pub mod fsutil;
pub mod identity;
pub mod init;
pub mod lifecycle;
pub mod logging;
pub mod oci_archive;
pub mod pki;
pub mod qcow2;
pub mod registry_env;
pub mod render;
pub mod yaml_out;
