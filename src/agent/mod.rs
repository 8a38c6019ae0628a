//! The robot agent: desired tasks in, supervised processes out.


/// `k8s4r-agent run ...` — see `src/agent` for the implementation.
pub fn cmd_run(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let _ = parser;
    Err("run: not built yet".into())
}
