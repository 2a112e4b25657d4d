//! Placeholder entry point; the real program is being written.
fn main() {
    eprintln!("not built yet");
    std::process::exit(2);
}
