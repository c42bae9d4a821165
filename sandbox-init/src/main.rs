//! `cowork-microvm-sandbox-init --proxy SOCKET --listen ADDR -- COMMAND...`:
//! pid 1 of a bwrap sandbox (see the cowork-sandbox-init library).

fn main() {
    std::process::exit(cowork_sandbox_init::main_with_args(
        std::env::args_os().skip(1),
    ));
}
