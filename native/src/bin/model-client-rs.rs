//! `model-client-rs`: send one request file to OpenAI or Anthropic; all logic is in `prompt_runner::cli`.

fn main() {
    std::process::exit(prompt_runner::cli::run(std::env::args().skip(1).collect()));
}
