use std::process::ExitCode;

use clap::Parser;
use cowork_microvm::cli::{normalize_args, Cli, Command, VmCommand};
use cowork_microvm::config::{default_socket, Settings};
use cowork_microvm::select::Kind;
use cowork_microvm::{app, bench, doctor, image, logging, privileges, run, server, vm_boot};

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn serve(socket: Option<std::path::PathBuf>, backend: Option<String>) -> anyhow::Result<()> {
    privileges::close_inherited_descriptors();
    let settings = Settings::load();
    let log = logging::init(logging::log_file_path(&settings.home).as_deref());
    tracing::info!(
        pid = std::process::id(),
        version = env!("CARGO_PKG_VERSION"),
        "cowork-microvm starting"
    );
    let sel = app::choose(&settings, backend.as_deref());
    let bwrap = cowork_bwrap_fallback::bwrap::probe::find_on_path("bwrap");
    let privs = privileges::forbid_new_privileges(sel.chosen, bwrap.as_deref());
    tracing::info!("privilege gain through exec: {privs}");
    let helper = app::build(&settings, &sel, log);
    let socket = socket.unwrap_or_else(default_socket);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // A kvm helper runs no session process of its own, so the whole process
    // can be confined (bwrap and host start the sessions' programs, which
    // would inherit a filter). After the runtime exists: its threads too.
    if sel.chosen == Kind::Kvm && sel.usable {
        if let Some(mode) = cowork_microvm::config::vm_seccomp() {
            match cowork_vmm::seccomp::install_process_wide(mode) {
                Ok(()) => tracing::info!("seccomp: the helper's threads are filtered ({mode:?})"),
                Err(e) => tracing::warn!("seccomp: {e}; the helper runs unfiltered"),
            }
        }
    }
    let result = rt.block_on(async {
        let bound = server::bind(&socket)?;
        server::run(helper, bound).await?;
        anyhow::Ok(())
    });
    match &result {
        Ok(()) => tracing::info!("cowork-microvm exiting"),
        Err(e) => tracing::error!("cowork-microvm exiting: {e:#}"),
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Serve { socket, backend } => serve(socket, backend).map(|()| 0),
        Command::Run(args) => run::main(args),
        Command::Doctor { json } => Ok(doctor::main(json)),
        Command::Bench(args) => bench::main(args),
        Command::Image(cmd) => image::main(cmd),
        Command::Uninstall { purge, yes } => cowork_microvm::uninstall::main(purge, yes),
        Command::Call {
            socket,
            method,
            params,
        } => cowork_microvm::client::call_main(
            &socket.unwrap_or_else(default_socket),
            &method,
            &params,
        ),
        Command::Vm(VmCommand::Boot(args)) => vm_boot::main(args),
        Command::SandboxInit {
            proxy,
            listen,
            command,
        } => Ok(cowork_bwrap_fallback::bwrap::init::main(
            &proxy, &listen, &command,
        )),
    };
    match result {
        Ok(code) => exit(code),
        Err(e) => {
            eprintln!("cowork-microvm: {e:#}");
            ExitCode::from(1)
        }
    }
}
