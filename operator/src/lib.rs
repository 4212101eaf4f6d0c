//! tollgate-operator: reconciles ApiManager, ApiDeployment, ThrottlePolicy and
//! KeyManager into StatefulSets, Services, HPAs, PDBs and artifact files.

pub mod artifacts;
pub mod config;
pub mod controllers;
pub mod decisions;
pub mod definitions;
pub mod dependency_health;
pub mod error;
pub mod folder;
pub mod http;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod pod_health;
pub mod pod_status;
pub mod queue;
pub mod status;
pub mod workload;
