//! The command line. The app starts us as `<helper> -socket <path>` (one
//! dash), and the community launcher as `<node> cowork-vm-service.js -socket
//! <path>`; [`normalize_args`] maps both onto `serve --socket <path>`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cowork-microvm",
    version,
    about = "Cowork VM helper for Claude Desktop on Linux",
    long_about = "Cowork VM helper for Claude Desktop on Linux.\n\n\
Claude Desktop starts it as `cowork-microvm -socket PATH`; it runs each \
Cowork session in a microVM (kvm backend: /dev/kvm and a guest image), \
else a bubblewrap sandbox (bwrap), else unsandboxed (host, only when asked).",
    after_long_help = "FIRST STEPS:\n    \
cowork-microvm doctor            which backend will run, what is missing\n    \
cowork-microvm image build       build the guest image (kvm backend)\n\n\
UPDATE:\n    \
cowork-microvm image build       builds a new image beside the current one and switches to it\n    \
cowork-microvm image prune       removes old images no running VM uses\n\n\
REMOVE:\n    \
cowork-microvm uninstall --purge   your images, caches, session data, logs, config\n    \
apt purge cowork-microvm           the package\n\n\
FILES:\n    \
~/.local/share/cowork-microvm/images/current   the guest image ($COWORK_VM_IMAGE_DIR)\n    \
~/.local/share/cowork-microvm                  session disks and data ($COWORK_VM_DATA_DIR)\n    \
~/.cache/cowork-microvm                        build caches\n    \
~/.config/cowork-microvm/config.json           settings\n    \
/usr/lib/cowork-microvm/{vmlinux,cowork-guest} the packaged kernel and guest agent"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the helper socket (what the desktop app starts).
    Serve {
        /// Socket path [default: $XDG_RUNTIME_DIR/cowork-vm-service.sock].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Force a backend: kvm, bwrap or host.
        #[arg(long)]
        backend: Option<String>,
    },
    /// Run one command in a session, as the app would, and exit with its code.
    Run(RunArgs),
    /// Say which backend will run and why, what is missing, and how to fix it.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Measure spawn latency, output throughput and memory.
    Bench(BenchArgs),
    /// Send one request to a running helper and print its result (JSON).
    Call {
        #[arg(long)]
        socket: Option<PathBuf>,
        /// e.g. isRunning, startVM, getSessionsDiskInfo
        method: String,
        /// The params object, as JSON.
        #[arg(default_value = "{}")]
        params: String,
    },
    /// Build or verify the guest kernel and rootfs images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Remove what cowork-microvm created for you: images, caches, session
    /// disks and data, logs, the runtime socket, config.
    Uninstall {
        /// Required: this removes data, it does not uninstall the package
        /// (apt purge cowork-microvm does that).
        #[arg(long)]
        purge: bool,
        /// Do not ask (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Boot the guest with the in-process VMM (for debugging and the
    /// nested test harness).
    #[command(subcommand)]
    Vm(VmCommand),
    /// pid 1 inside a bwrap sandbox (internal).
    #[command(hide = true)]
    SandboxInit {
        #[arg(long)]
        proxy: PathBuf,
        #[arg(long)]
        listen: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Force a backend: kvm, bwrap or host.
    #[arg(long)]
    pub backend: Option<String>,
    /// Use a helper already serving this socket instead of one in-process.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Share HOSTDIR at /sessions/<session>/mnt/NAME (read-only with :ro).
    /// The first one is the working directory. Default: the current
    /// directory, when it is inside your home.
    #[arg(long = "mount", value_name = "HOSTDIR[:NAME[:ro|rw]]")]
    pub mounts: Vec<String>,
    /// Allow the session to reach this domain (repeatable; `*.example.com`).
    #[arg(long = "allow-domain", value_name = "DOMAIN")]
    pub allow_domains: Vec<String>,
    /// Session name [default: run-<pid>].
    #[arg(long)]
    pub name: Option<String>,
    /// Install DIR as the Claude Code SDK (installSdk with DIR's parent and
    /// its last component as the version): DIR must hold `claude`, which a
    /// command named `claude` then runs.
    #[arg(long, value_name = "DIR")]
    pub sdk: Option<PathBuf>,
    /// Set KEY=VALUE in the session's environment (repeatable), passed in
    /// spawn's `env` as the app passes it.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build the kernel and a rootfs (reproducibly; cached by input hash).
    Build {
        /// standard (Debian bookworm with what a coding agent and its
        /// tools expect; needs root and mmdebstrap) or minimal (the agent
        /// and busybox; what the VMM tests boot), or both as a list
        /// (standard,minimal): the first is the one the manifest names and
        /// the kvm backend boots.
        #[arg(long, default_value = "standard")]
        profile: String,
        /// Build into this directory as it is (no versions, no `current`
        /// link). Without it the image goes into a new directory under
        /// $COWORK_VM_IMAGE_DIR (or $XDG_DATA_HOME/cowork-microvm/images),
        /// `current` is switched to it once complete, and older images no
        /// running VM uses are removed.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The statically linked guest agent [default: the packaged one
        /// (/usr/lib/cowork-microvm/cowork-guest), cowork-guest beside this
        /// binary, or as `make agent` builds it].
        #[arg(long)]
        agent: Option<PathBuf>,
        /// A prebuilt guest kernel (vmlinux) to use, with its kernel.json
        /// beside it [default: the packaged one
        /// (/usr/lib/cowork-microvm/vmlinux); else it is built from
        /// linux-source-6.12].
        #[arg(long, value_name = "VMLINUX")]
        kernel: Option<PathBuf>,
        /// Only the rootfs (no kernel build).
        #[arg(long)]
        no_kernel: bool,
    },
    /// Check every artifact against its manifest.
    Verify {
        /// An image directory [default: the current image].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the images: which is current, size, profile, in use by a VM.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove every image but the current one, except those a running VM
    /// still uses.
    Prune,
}

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Boot the guest kernel and rootfs; its console goes to stdout.
    Boot(VmBootArgs),
}

#[derive(clap::Args, Debug)]
pub struct VmBootArgs {
    /// Guest kernel [default: vmlinux in the image directory].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Root filesystem image, attached read-only [default: the image
    /// directory's minimal rootfs].
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Another disk, read-write (repeatable).
    #[arg(long = "disk")]
    pub disks: Vec<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub mem_mib: u64,
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Stop the VM once the guest agent says it is ready.
    #[arg(long)]
    pub until_ready: bool,
    /// Stop the VM after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Show the guest kernel's messages (drops `quiet`).
    #[arg(long)]
    pub verbose: bool,
    /// Write the figures (boot timer, ready time, memory) here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Boot the same guest with this QEMU (-M microvm, KVM) instead, for
    /// side-by-side figures measured the same way.
    #[arg(long, value_name = "QEMU_BINARY")]
    pub qemu: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Backends to measure, comma-separated (host, bwrap, kvm), and `qemu`:
    /// the same guest under QEMU with Debian's virtiofsd, for reference.
    #[arg(long, default_value = "host")]
    pub backend: String,
    /// Spawn/exit round trips per backend (after warm-up) [default: 30
    /// with --quick, else 200].
    #[arg(long, value_name = "N")]
    pub iterations: Option<usize>,
    /// MiB of output per throughput run [default: 16 with --quick, else
    /// 256].
    #[arg(long, value_name = "MIB")]
    pub output_mib: Option<usize>,
    /// A short profile for CI.
    #[arg(long)]
    pub quick: bool,
    /// Files in the shared-folder untar [default: 1000 with --quick, else 5000].
    #[arg(long, value_name = "N")]
    pub files: Option<usize>,
    /// MiB of the shared-folder big-file write and read [default: 64 with
    /// --quick, else 1024].
    #[arg(long, value_name = "MIB")]
    pub big_mib: Option<usize>,
    /// Stdout throughput runs and cold starts per backend: more give a
    /// steadier median on a noisy machine [default: 2 with --quick, else 5].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub repeats: Option<u16>,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a chart of the figures here (SVG; a PNG beside it when
    /// rsvg-convert is installed).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// The backend ratios are computed against [default: the first measured].
    #[arg(long)]
    pub baseline: Option<String>,
    /// Also measure the community Node daemon (cowork-vm-service.js) on the
    /// same backends, driven over the same socket protocol.
    #[arg(long, value_name = "PATH")]
    pub peer_node: Option<PathBuf>,
}

/// Rewrites the app's and the community launcher's argument forms into
/// this CLI's: a leading `...cowork-vm-service.js` is dropped, `-socket P`
/// and `-socket=P` become `serve --socket P`, and no arguments means `serve`.
/// Only `serve`'s own flags are rewritten: never another subcommand's
/// arguments (`run -- grep -socket f` runs exactly that), nor anything
/// after `--`.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    if args.len() > 1 && args[1].to_string_lossy().ends_with("cowork-vm-service.js") {
        args.remove(1);
    }
    let first = args.get(1).map(|a| a.to_string_lossy().into_owned());
    match first.as_deref() {
        None => args.push("serve".into()),
        Some(a) if a.starts_with('-') && !matches!(a, "-h" | "--help" | "-V" | "--version") => {
            args.insert(1, "serve".into());
        }
        _ => {}
    }
    if args.get(1).and_then(|a| a.to_str()) != Some("serve") {
        return args;
    }
    let mut flags = true;
    args.into_iter()
        .map(|a| {
            if !flags {
                return a;
            }
            match a.to_str() {
                Some("--") => {
                    flags = false;
                    a
                }
                Some("-socket") => "--socket".into(),
                Some(s) if s.starts_with("-socket=") => format!("-{s}").into(),
                _ => a,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[&str]) -> Vec<String> {
        normalize_args(v.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn app_and_community_forms() {
        assert_eq!(
            norm(&["h", "-socket", "/s"]),
            ["h", "serve", "--socket", "/s"]
        );
        assert_eq!(
            norm(&["h", "/usr/lib/claude/cowork-vm-service.js", "-socket", "/s"]),
            ["h", "serve", "--socket", "/s"]
        );
        assert_eq!(norm(&["h", "-socket=/s"]), ["h", "serve", "--socket=/s"]);
        assert_eq!(norm(&["h"]), ["h", "serve"]);
        assert_eq!(norm(&["h", "doctor"]), ["h", "doctor"]);
        assert_eq!(norm(&["h", "--help"]), ["h", "--help"]);
        let cli = Cli::try_parse_from(norm(&["h", "-socket", "/s"])).unwrap();
        assert!(matches!(
            cli.command,
            Command::Serve {
                socket: Some(_),
                ..
            }
        ));
        let run =
            Cli::try_parse_from(["h", "run", "--mount", "/a:x:ro", "--", "ls", "-la"]).unwrap();
        let Command::Run(r) = run.command else {
            panic!()
        };
        assert_eq!(r.command, ["ls", "-la"]);
        let run = Cli::try_parse_from([
            "h", "run", "--sdk", "/s/2.1", "--env", "A=1", "--env", "B=x=y", "--", "claude", "-p",
            "hi",
        ])
        .unwrap();
        let Command::Run(r) = run.command else {
            panic!()
        };
        assert_eq!(r.sdk.as_deref(), Some(std::path::Path::new("/s/2.1")));
        assert_eq!(r.env, ["A=1", "B=x=y"]);
        assert_eq!(r.command, ["claude", "-p", "hi"]);
        // A command's own `-socket` is its business.
        assert_eq!(
            norm(&["h", "run", "--", "grep", "-socket", "f"]),
            ["h", "run", "--", "grep", "-socket", "f"]
        );
        assert_eq!(
            norm(&["h", "run", "grep", "-socket=x"]),
            ["h", "run", "grep", "-socket=x"]
        );
        assert_eq!(
            norm(&["h", "serve", "-socket", "/s", "--", "-socket"]),
            ["h", "serve", "--socket", "/s", "--", "-socket"]
        );
    }
}
