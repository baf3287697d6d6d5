//! Followup's contracts, generated from `proto/followup/**.proto`.
//!
//! - `followup::<area>::v1`: the gRPC API of each service (messages, clients, servers);
//! - `followup::events::v1`: every event carried on NATS (docs/ARCHITECTURE.md#events);
//! - [`subjects`]: the stream and subject of each event, built and parsed from one table;
//! - [`FILE_DESCRIPTOR_SET`] / [`descriptor_pool`]: the same schemas at run time, for gRPC reflection and
//!   for proto3 JSON (a publisher may send `Content-Type: application/json`).

use std::sync::OnceLock;

pub mod subjects;

// Generated code: prost and tonic output is not held to the workspace's clippy lints.
#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
pub mod followup {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("followup.common.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("followup.events.v1");
        }
    }
    pub mod plans {
        pub mod v1 {
            tonic::include_proto!("followup.plans.v1");
        }
    }
    pub mod cases {
        pub mod v1 {
            tonic::include_proto!("followup.cases.v1");
        }
    }
    pub mod engagement {
        pub mod v1 {
            tonic::include_proto!("followup.engagement.v1");
        }
    }
    pub mod scheduler {
        pub mod v1 {
            tonic::include_proto!("followup.scheduler.v1");
        }
    }
    pub mod notifications {
        pub mod v1 {
            tonic::include_proto!("followup.notifications.v1");
        }
    }
}

/// The encoded `FileDescriptorSet` of every Followup proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("followup_descriptor");

/// All Followup message descriptors, decoded once.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: OnceLock<prost_reflect::DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The set is produced by build.rs from the same sources; failing to decode it is a build bug.
        #[allow(clippy::expect_used)]
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("embedded descriptor set is valid")
    })
}
