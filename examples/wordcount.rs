//! The seed's word count, written in Rust: run `nc -lk 9898`, then
//! `cargo run --example wordcount`, and type lines into nc.
use sluice::StreamingContext;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ssc = StreamingContext::new("wordcount", Duration::from_secs(1));
    ssc.socket_text_stream("127.0.0.1", 9898)
        .flat_map("unnest(string_to_array(line, ' ')) AS word")
        .map("word, 1 AS n")
        .reduce_by_key("word", "sum(n) AS n")
        .pprint();
    ssc.start().await?;
    ssc.await_termination().await?;
    Ok(())
}
