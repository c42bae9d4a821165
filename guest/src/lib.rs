//! The guest side of cowork-microvm: the agent that is PID 1 in the VM
//! ([`init`], [`agent`], [`forward`]) and the host<->guest wire types
//! ([`wire`]), which the host side imports too.

pub mod agent;
pub mod forward;
pub mod init;
pub mod wire;
