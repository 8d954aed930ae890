//! Writes the package's generated files from the clap definition (`s3mount::cli::command()`),
//! so the man pages and shell completions can never drift from the options the binary takes.
//!
//! Usage: `cargo run --example package_assets -- OUT_DIR` (what `scripts/package` runs). Writes
//! `OUT_DIR/man/s3mount.1`, one `s3mount-SUBCOMMAND.1` per subcommand, and
//! `OUT_DIR/completions/{s3mount.bash,_s3mount,s3mount.fish}`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: package_assets OUT_DIR");
    };
    let out = PathBuf::from(out);
    write_man_pages(&out.join("man"))?;
    write_completions(&out.join("completions"))?;
    Ok(())
}

/// `s3mount.1` for the mount (with the subcommands listed), and a page per subcommand named
/// as man(1) expects for `man s3mount-warm`.
fn write_man_pages(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let command = s3mount::cli::command();
    render_man_page(command.clone(), &dir.join("s3mount.1"))?;
    for sub in command.get_subcommands() {
        // clap names are &'static str (without its "string" feature); this process is short.
        let name: &'static str = format!("s3mount-{}", sub.get_name()).leak();
        let page = sub
            .clone()
            .name(name)
            .bin_name(format!("s3mount {}", sub.get_name()));
        render_man_page(page, &dir.join(format!("{name}.1")))?;
    }
    Ok(())
}

fn render_man_page(command: clap::Command, path: &Path) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .section("1")
        .manual("s3mount")
        .render(&mut page)
        .context("rendering a man page")?;
    fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}

/// Completions for the shells Debian ships completion directories for.
fn write_completions(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = s3mount::cli::command();
        clap_complete::generate_to(shell, &mut command, "s3mount", dir)
            .with_context(|| format!("writing the {shell} completion"))?;
    }
    Ok(())
}
