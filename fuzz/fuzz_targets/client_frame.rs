//! A client's WebSocket text frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roompin_shared::protocol::ClientFrame;

fuzz_target!(|data: &[u8]| {
    // tungstenite hands the node only UTF-8 text frames.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::parse(text) {
        Ok(ClientFrame::Message { text }) => {
            // What was read is what a well-formed frame of it reads as.
            let again = serde_json::json!({"type": "message", "text": text}).to_string();
            assert_eq!(
                ClientFrame::parse(&again).ok(),
                Some(ClientFrame::Message { text })
            );
        }
        Err(e) => assert!(!e.code.is_empty() && !e.message.is_empty()),
    }
});
