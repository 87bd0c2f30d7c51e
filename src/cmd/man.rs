//! `sealpipe man [--out DIR]`: the manual pages, from the clap definitions (one page per
//! subcommand, `sealpipe-NAME(1)`) and from the table of config keys (`sealpipe.toml(5)`,
//! `crate::config::schema`), so that they cannot drift from the command line or the parser.
//!
//! Without `--out` the main page `sealpipe(1)` is printed; with it every page is written to
//! DIR (`sealpipe.1`, `sealpipe-*.1`, `sealpipe.toml.5`).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

use crate::cmd::Cli;
use crate::config::schema::{self, Key, Section, NONE, REQUIRED};
use crate::VERSION;

/// One manual page: its file name (`sealpipe-check.1`) and its roff text.
pub(crate) struct Page {
    pub(crate) file: String,
    pub(crate) text: String,
}

/// The footer of every page.
fn source() -> String {
    format!("sealpipe {VERSION}")
}

/// The command tree as the pages show it: no `help` subcommands (they would be pages naming
/// pages that do not exist), built so that subcommands know their full names.
fn command() -> clap::Command {
    fn no_help(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        let mut cmd = cmd.disable_help_subcommand(true);
        for name in names {
            cmd = cmd.mut_subcommand(name, no_help);
        }
        cmd
    }
    let mut cmd = no_help(Cli::command()).long_about(DESCRIPTION);
    cmd.build();
    cmd
}

/// The main page's DESCRIPTION.
const DESCRIPTION: &str = "\
sealpipe carries plain TCP connections between two hosts sealed with ChaCha20-Poly1305, so that \
legacy services and their clients need no change. A connector accepts local plaintext \
connections and carries each one sealed to a listener, which forwards it in plaintext to the \
service. The two authenticate each other with long-term RSA keys pinned by fingerprint and agree \
fresh X25519 keys for every connection.

One TOML file per host describes its tunnels (sealpipe.toml(5)); sealpipe run runs them, and \
systemd runs sealpipe run (sealpipe@NAME.service runs /etc/sealpipe/NAME.toml). Each \
subcommand has a page of its own, listed under SUBCOMMANDS.";

/// Text with `code` spans in bold.
fn inline(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(i, s)| if i % 2 == 1 { bold(s) } else { roman(s) })
        .collect()
}

fn section(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

fn para(roff: &mut Roff, text: &str) {
    roff.control("PP", []);
    roff.text(inline(text));
}

/// A tagged paragraph: `tag` on its line, `text` indented below it.
fn item(roff: &mut Roff, tag: Vec<Inline>, text: &str) {
    roff.control("TP", []);
    roff.text(tag);
    roff.text(inline(text));
}

/// Lines shown as they are (an example).
fn verbatim(roff: &mut Roff, lines: &str) {
    roff.control("PP", []);
    roff.control("RS", ["4"]);
    roff.control("nf", []);
    for line in lines.lines() {
        if line.is_empty() {
            roff.control("sp", []);
        } else {
            roff.text([roman(line)]);
        }
    }
    roff.control("fi", []);
    roff.control("RE", []);
}

/// A SEE ALSO section naming `pages` (`sealpipe-check(1)`).
fn see_also(roff: &mut Roff, pages: &[String]) {
    section(roff, "SEE ALSO");
    roff.text([roman(pages.join(", "))]);
}

/// `roff` as text to go inside a page that already has the roff preamble.
fn body(roff: &Roff) -> String {
    roff.render()
        .lines()
        .filter(|l| !l.starts_with(".ie \\n(.g .ds Aq") && !l.starts_with(".el .ds Aq"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `page` with the characters that an ASCII terminal's font lacks (`man` in the C locale)
/// written as roff glyph names.
fn portable(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    for c in page.chars() {
        match c {
            '…' => out.push_str("\\&..."),
            '→' => out.push_str("\\(->"),
            '—' => out.push_str("\\(em"),
            '–' => out.push_str("\\(en"),
            '§' => out.push_str("\\(sc"),
            c => out.push(c),
        }
    }
    out
}

/// Renders a clap page with `extra` sections before its VERSION section (or at the end).
fn render(man: Man, extra: &Roff) -> anyhow::Result<String> {
    let mut out = Vec::new();
    // An empty date argument would vanish from `.TH` and shift the source into its place.
    man.date("\"\"").source(source()).render(&mut out)?;
    let page = String::from_utf8(out).context("the rendered page is not UTF-8")?;
    let extra = body(extra);
    Ok(portable(&match page.find("\n.SH VERSION\n") {
        Some(i) => format!("{}\n{extra}{}", &page[..i], &page[i + 1..]),
        None => page + &extra,
    }))
}

/// The page name of a (sub)command: `sealpipe`, `sealpipe-trust-add`.
fn name_of(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

/// Every page: `sealpipe(1)`, one per subcommand (nested ones too), `sealpipe.toml(5)`.
pub(crate) fn pages() -> anyhow::Result<Vec<Page>> {
    let root = command();
    let mut subs = Vec::new();
    collect(&root, None, &mut subs);
    let sub_names: Vec<String> = subs.iter().map(|(c, _)| name_of(c)).collect();

    let mut pages = vec![Page {
        file: "sealpipe.1".to_string(),
        text: render(Man::new(root.clone()), &main_sections(&sub_names))?,
    }];
    for (cmd, parent) in &subs {
        let mut refs = vec!["sealpipe(1)".to_string()];
        if let Some(p) = parent {
            refs.push(format!("{p}(1)"));
        }
        if cmd.get_arguments().any(|a| a.get_long() == Some("config")) {
            refs.push("sealpipe.toml(5)".to_string());
        }
        let mut extra = Roff::default();
        see_also(&mut extra, &refs);
        pages.push(Page {
            file: format!("{}.1", name_of(cmd)),
            text: render(Man::new(cmd.clone()), &extra)?,
        });
    }
    pages.push(Page {
        file: "sealpipe.toml.5".to_string(),
        text: config_page(&sub_names),
    });
    Ok(pages)
}

/// The subcommands under `cmd`, depth first, each with the page name of its parent if that
/// is not the main page.
fn collect(
    cmd: &clap::Command,
    parent: Option<String>,
    out: &mut Vec<(clap::Command, Option<String>)>,
) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out.push((sub.clone(), parent.clone()));
        collect(sub, Some(name_of(sub)), out);
    }
}

/// SIGNALS, FILES, ENVIRONMENT, EXIT STATUS and SEE ALSO of `sealpipe(1)`.
fn main_sections(subcommands: &[String]) -> Roff {
    let mut r = Roff::default();
    section(&mut r, "SIGNALS");
    item(
        &mut r,
        vec![bold("SIGTERM"), roman(", "), bold("SIGINT")],
        "Stop accepting connections and let the open ones drain for up to `drain_timeout` \
         (30 s by default), then close the rest and exit.",
    );
    item(
        &mut r,
        vec![bold("SIGHUP")],
        "Reload: read the config file, the keys and the trust lists again and apply them to \
         new connections; established connections stay (except those of a key the listener no \
         longer trusts, with `revoke = \"cut\"`). A config that does not load is logged and the \
         running one kept. `systemctl reload sealpipe@NAME` runs `sealpipe check` first, then \
         sends SIGHUP.",
    );

    section(&mut r, "FILES");
    let file = |r: &mut Roff, path: &str, text: &str| item(r, vec![italic(path)], text);
    file(
        &mut r,
        "/etc/sealpipe/NAME.toml",
        "The config of the instance sealpipe@NAME.service (sealpipe.toml(5)); any other path \
         works with `--config`.",
    );
    file(
        &mut r,
        "/etc/sealpipe/*.pem, *.pem.pub",
        "Private keys (`private_key`, mode 0600 and owned by the service user) and their \
         public halves, as `sealpipe keygen` writes them.",
    );
    file(
        &mut r,
        "peers files",
        "A listener's `peers_file`: one trusted fingerprint per line, optionally followed by a \
         name; `#` comments. Edited by `sealpipe trust`; re-read on SIGHUP.",
    );
    file(
        &mut r,
        "/var/lib/sealpipe/known_peers",
        "The usual `known_peers` file of `peer = \"tofu\"` connectors (the unit's writable \
         StateDirectory): the listener key first seen for each `connect` address.",
    );
    file(
        &mut r,
        "DIR/NAME.sock, DIR/NAME-HASH.sock",
        "The control socket that `sealpipe status` reads, unless the config says `control = \
         false` or names another path: `NAME.sock` for /etc/sealpipe/NAME.toml, \
         `NAME-HASH.sock` for any other NAME.toml (HASH: 8 hex digits of the SHA-256 of its \
         absolute path). DIR is $RUNTIME_DIRECTORY under systemd, else /run/sealpipe for \
         root, else $XDG_RUNTIME_DIR/sealpipe, else /tmp/sealpipe-UID.",
    );
    file(
        &mut r,
        "/usr/lib/systemd/system/sealpipe@.service",
        "The hardened template unit (/etc/systemd/system/ for a hand install).",
    );
    file(
        &mut r,
        "/usr/share/doc/sealpipe/",
        "README.md, docs/operations.md (the operator's guide), PROTOCOL.md (the wire protocol), \
         SECURITY.md (the threat model) and examples/ with a commented listener and connector \
         config.",
    );

    section(&mut r, "ENVIRONMENT");
    item(
        &mut r,
        vec![bold("RUST_LOG")],
        "The log filter when `--log-level` is not given: a level (off, error, warn, info, \
         debug, trace) or directives such as `info,sealpipe=debug`. An invalid one is an error.",
    );
    item(
        &mut r,
        vec![
            bold("RUNTIME_DIRECTORY"),
            roman(", "),
            bold("XDG_RUNTIME_DIR"),
        ],
        "Where the default control socket is (see FILES).",
    );
    item(
        &mut r,
        vec![bold("JOURNAL_STREAM")],
        "Set by systemd: when stderr is the journal, log lines carry no timestamp of their own.",
    );

    section(&mut r, "EXIT STATUS");
    item(&mut r, vec![bold("0")], "Success.");
    item(
        &mut r,
        vec![bold("1")],
        "The command failed; the reason is printed on stderr with its context (a config error \
         names FILE:LINE:COLUMN, the section and the key). `sealpipe check` found a problem; \
         `sealpipe demo --once` had no round trip.",
    );
    item(
        &mut r,
        vec![bold("2")],
        "Usage error: an unknown option, a missing or invalid argument, or an invalid \
         `--log-level` or RUST_LOG filter.",
    );
    item(
        &mut r,
        vec![bold("78")],
        "`sealpipe run` only (EX_CONFIG of sysexits.h): the config file, or a key, PSK, peers \
         or known_peers file it names, is wrong. Starting again cannot help, so the systemd \
         unit does not restart on it (`RestartPreventExitStatus=78`); `sealpipe check` reports \
         the same problems with status 1. Any other failure of `run` (a listen address in use, \
         another sealpipe already running the config) is 1.",
    );

    let mut refs = vec!["sealpipe.toml(5)".to_string()];
    refs.extend(subcommands.iter().map(|s| format!("{s}(1)")));
    see_also(&mut r, &refs);
    r
}

/// The tag of a key: its name, type and default.
fn key_tag(k: &Key) -> Vec<Inline> {
    let default = match k.default.as_str() {
        REQUIRED => "required".to_string(),
        NONE => "default: none".to_string(),
        d => format!("default: {d}"),
    };
    vec![bold(k.name), roman(format!(" ({}; {default})", k.kind))]
}

/// `sealpipe.toml(5)`: every key of the table, with the rules for values and errors.
fn config_page(subcommands: &[String]) -> String {
    let mut r = Roff::default();
    r.control(
        "TH",
        [
            "sealpipe.toml",
            "5",
            "\"\"",
            &source(),
            "File Formats Manual",
        ],
    );
    section(&mut r, "NAME");
    r.text([roman("sealpipe.toml - the configuration file of sealpipe")]);
    section(&mut r, "SYNOPSIS");
    r.text([italic("/etc/sealpipe/NAME.toml")]);
    section(&mut r, "DESCRIPTION");
    r.text(inline(
        "One TOML file describes one sealpipe process: its identity (`[identity]`), tuning \
         defaults (`[defaults]`) and any number of tunnels, `[[listener]]` (sealed in, plain \
         out) and `[[connector]]` (plain in, sealed out), at least one in all. \
         sealpipe@NAME.service runs /etc/sealpipe/NAME.toml; `sealpipe check --config FILE` \
         validates a file and the keys it names, and SIGHUP makes a running daemon read it \
         again.",
    ));
    para(
        &mut r,
        "Unknown keys are errors. Every error is one line that names the file, line and column, \
         the section (and tunnel) and the key, for example",
    );
    verbatim(
        &mut r,
        "/etc/sealpipe/b.toml:12:11: listener \"redis\": key `forward`: invalid address \"127.0.0.1\": missing `:port`",
    );
    section(&mut r, "VALUES");
    item(
        &mut r,
        vec![bold("sizes")],
        "A string with a unit, `\"16KiB\"`, `\"64 MiB\"`, `\"1GiB\"` (KiB, MiB, GiB are powers of \
         1024; kB, MB, GB powers of 1000), or a bare integer, in bytes.",
    );
    item(
        &mut r,
        vec![bold("durations")],
        "A string such as `\"500ms\"`, `\"10s\"`, `\"2m\"` or `\"1h 30m\"`.",
    );
    item(
        &mut r,
        vec![bold("addresses")],
        "HOST:PORT: `\"192.0.2.7:7443\"`, `\"[2001:db8::7]:7443\"` or `\"db.example.net:7443\"` \
         (a host name is looked up for every connection, never cached); or, on the plaintext \
         side only (a connector's `listen`, a listener's `forward`), `\"unix:PATH\"`, a Unix \
         domain socket. The sealed side is always TCP.",
    );
    item(
        &mut r,
        vec![bold("paths")],
        "Relative paths, `unix:` ones included, are resolved against the directory of the \
         config file.",
    );

    section(&mut r, "KEYS");
    for s in Section::ALL {
        r.control("SS", [s.header()]);
        r.text(inline(s.about()));
        let own = schema::keys(s);
        let own = own
            .iter()
            .filter(|k| s == Section::Defaults || k.section == s);
        for k in own {
            item(&mut r, key_tag(k), k.doc);
        }
        if s.takes_tuning() && s != Section::Defaults {
            para(
                &mut r,
                "And every key of `[defaults]`, which overrides it for this tunnel.",
            );
        }
    }

    section(&mut r, "EXAMPLE");
    r.text(inline(
        "Host A's application reaches Redis on host B through a connector on A and a listener on \
         B (the fingerprints are those `sealpipe keygen` printed on the other host):",
    ));
    verbatim(&mut r, EXAMPLE);

    section(&mut r, "FILES");
    item(
        &mut r,
        vec![italic("/usr/share/doc/sealpipe/examples/")],
        "`listener.toml` and `connector.toml`: a commented pair, every key explained.",
    );
    let mut refs = vec!["sealpipe(1)".to_string()];
    refs.extend(subcommands.iter().map(|s| format!("{s}(1)")));
    see_also(&mut r, &refs);
    portable(&r.render())
}

const EXAMPLE: &str = "\
# host B: /etc/sealpipe/redis.toml
[identity]
private_key = \"/etc/sealpipe/host-b.pem\"

[[listener]]
name = \"redis\"
listen = \"0.0.0.0:7443\"
forward = \"127.0.0.1:6379\"
peers = [\"SHA256:<host A's fingerprint> host-a\"]

# host A: /etc/sealpipe/redis.toml
[identity]
private_key = \"/etc/sealpipe/host-a.pem\"

[[connector]]
name = \"redis\"
listen = \"127.0.0.1:6379\"
connect = \"host-b.example.net:7443\"
peer = \"SHA256:<host B's fingerprint>\"";

/// `sealpipe man`: prints `sealpipe(1)`; with `out`, writes every page there.
pub(crate) fn run(out: Option<&Path>) -> anyhow::Result<()> {
    let pages = pages()?;
    let Some(dir) = out else {
        let mut stdout = std::io::stdout().lock();
        return match stdout.write_all(pages[0].text.as_bytes()) {
            // `sealpipe man | head` is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => Ok(r?),
        };
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for page in &pages {
        let path = dir.join(&page.file);
        std::fs::write(&path, &page.text).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
