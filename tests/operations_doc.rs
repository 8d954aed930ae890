//! docs/OPERATIONS.md promises every option in both spellings: this keeps it true. It walks the
//! clap definition (the mount's options and those of each subcommand) and fails, listing all of
//! them at once, for any long option the page does not name as `--name`, and for any mount
//! option it does not name in its `-o` spelling (`name_with_underscores`, bare or `=...`). A new
//! option without a line in the operations page fails here, not in a user's fstab.

use std::collections::BTreeSet;

const OPERATIONS: &str = include_str!("../docs/OPERATIONS.md");

/// Options clap adds itself: they are in `--help`, and mean nothing in fstab.
const CLAP_BUILT_IN: [&str; 2] = ["help", "version"];

/// The long names of `command`'s own options (not its subcommands').
fn long_options(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .filter_map(clap::Arg::get_long)
        .filter(|long| !CLAP_BUILT_IN.contains(long))
        .map(str::to_owned)
        .collect()
}

/// Whether `word` occurs in the page in backquotes, alone or followed by a value or `=`:
/// `` `--cache DIR` ``, `` `cache=DIR` ``, `` `allow_other` ``.
fn documented_in_code(word: &str) -> bool {
    OPERATIONS.match_indices(word).any(|(at, _)| {
        let before = OPERATIONS[..at].chars().next_back();
        let after = OPERATIONS[at + word.len()..].chars().next();
        // Inside a code span, and not the middle of a longer name (`--cache` in `--cache-size`).
        let starts = matches!(before, Some('`' | ' ' | ','));
        let ends = matches!(after, Some('`' | ' ' | '=' | ','));
        starts && ends && inside_code_span(at)
    })
}

/// Whether byte `at` of the page is inside a `` `...` `` span of its line.
fn inside_code_span(at: usize) -> bool {
    let line_start = OPERATIONS[..at].rfind('\n').map_or(0, |newline| newline + 1);
    OPERATIONS[line_start..at].matches('`').count() % 2 == 1
}

#[test]
fn every_long_option_of_every_command_is_on_the_operations_page() {
    let command = s3mount::cli::command();
    let mut missing = BTreeSet::new();
    let commands = std::iter::once(&command).chain(command.get_subcommands());
    for command in commands {
        for long in long_options(command) {
            let spelled = format!("--{long}");
            if !documented_in_code(&spelled) {
                missing.insert(format!("{spelled} (of {})", command.get_name()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/OPERATIONS.md does not name these options: {missing:?}"
    );
}

#[test]
fn every_mount_option_is_on_the_operations_page_in_its_o_spelling_too() {
    // `-o options` itself, and what the helper refuses, have no -o spelling.
    const NO_O_SPELLING: [&str; 2] = ["options", "foreground"];
    let command = s3mount::cli::command();
    let missing: Vec<String> = long_options(&command)
        .into_iter()
        .filter(|long| !NO_O_SPELLING.contains(&long.as_str()))
        .map(|long| long.replace('-', "_"))
        .filter(|o_name| !documented_in_code(o_name))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/OPERATIONS.md does not name these -o options: {missing:?}"
    );
}

#[test]
fn the_check_itself_tells_a_named_option_from_a_longer_one() {
    // The page names `--cache-size` and `--cache`; a name it lacks must not be found inside them.
    assert!(documented_in_code("--cache"));
    assert!(documented_in_code("--cache-size"));
    assert!(!documented_in_code("--cach"));
    assert!(!documented_in_code("--no-such-option"));
    assert!(!documented_in_code("cache_siz"));
}
