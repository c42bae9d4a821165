//! The guest side of cowork-microvm: the agent that is PID 1 in the VM
//! ([`init`], [`agent`], [`forward`]) and the host<->guest wire types
//! ([`wire`]), which the host side imports too.

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "agent")]
pub mod cgroups;
#[cfg(feature = "agent")]
pub mod confine;
#[cfg(feature = "agent")]
pub mod forward;
#[cfg(feature = "agent")]
pub mod init;
#[cfg(feature = "agent")]
pub mod mountinfo;
#[cfg(feature = "agent")]
pub mod oom;
#[cfg(feature = "agent")]
pub mod safe_path;
#[cfg(feature = "agent")]
pub mod session_end;
#[cfg(feature = "agent")]
pub mod session_ns;
#[cfg(feature = "agent")]
pub mod shares;
#[cfg(feature = "agent")]
pub mod stdin_queue;
pub mod wire;

#[cfg(all(test, feature = "agent"))]
#[path = "../../prerequisites/require.rs"]
mod prerequisite;
