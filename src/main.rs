//! The `ptl` command.

fn main() {
    ptl::plan::compute::pin_default_threads();
    std::process::exit(ptl::cli::main());
}
