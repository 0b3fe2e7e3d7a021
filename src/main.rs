//! The `ptl` command.

fn main() {
    std::process::exit(ptl::cli::main());
}
