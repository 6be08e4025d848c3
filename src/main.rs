//! The `event-sanitizer` binary: everything lives in the library.

// jemalloc for the whole process, librdkafka's C allocations included
// (`unprefixed_malloc_on_supported_platforms`): records, headers and
// delivery reports are allocated on one thread and freed on another, where
// glibc's malloc spent a third of the pipeline's CPU (measured in
// `benches/pipeline.rs`: 14.5 -> 9.8 CPU s per million events).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    event_sanitizer::cli::main()
}
