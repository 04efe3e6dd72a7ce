fn main() {
    std::process::exit(regimage::cli::main_exit_code(std::env::args_os()));
}
