//! The framing of `websocket.rs`, fed through an in-memory duplex stream.

use super::*;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: `first` is the first header byte (FIN, RSV, opcode), masked with `mask`.
fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(u8::from(fin) << 7 | opcode, payload, Some(MASK))
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn pair(max: usize) -> (WebSocket<DuplexStream>, DuplexStream) {
    let (server, client) = duplex(1 << 20);
    (WebSocket::new(server, max), client)
}

async fn next(ws: &mut WebSocket<DuplexStream>) -> Option<Result<Incoming, Error>> {
    std::future::poll_fn(|cx| ws.poll_next(cx)).await
}

async fn flush(ws: &mut WebSocket<DuplexStream>) {
    std::future::poll_fn(|cx| ws.poll_flush(cx)).await.unwrap();
}

/// A frame the server sent: (FIN, opcode, payload); it must not be masked.
async fn read_frame(client: &mut DuplexStream) -> (bool, u8, Vec<u8>) {
    let mut head = [0; 2];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7F {
        126 => usize::from(client.read_u16().await.unwrap()),
        127 => client.read_u64().await.unwrap() as usize,
        n => usize::from(n),
    };
    let mut payload = vec![0; len];
    client.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x80 != 0, head[0] & 0x0F, payload)
}

/// The close frame the server sent: its code (None when empty).
async fn read_close(client: &mut DuplexStream) -> Option<u16> {
    let (fin, opcode, payload) = read_frame(client).await;
    assert!(fin);
    assert_eq!(opcode, CLOSE);
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// Sends `bytes` and expects the server to fail with a close frame carrying `code`.
async fn rejected(bytes: &[u8], max: usize, code: u16) {
    let (mut ws, mut client) = pair(max);
    client.write_all(bytes).await.unwrap();
    match next(&mut ws).await {
        Some(Err(Error::Protocol { code: got, .. })) => assert_eq!(got, code),
        other => panic!("expected a protocol error {code}, got {other:?}"),
    }
    assert!(next(&mut ws).await.is_none(), "reading ends");
    ws.close().await.unwrap();
    assert_eq!(read_close(&mut client).await, Some(code));
    assert_eq!(ws.message.capacity(), 0);
}

fn assert_idle(ws: &WebSocket<DuplexStream>) {
    assert_eq!(ws.message.capacity(), 0, "no read buffer between messages");
    assert_eq!(ws.out.capacity(), 0, "no write buffer once flushed");
}

#[test]
fn unmask_is_a_bytewise_xor_at_every_length() {
    for len in 0..40 {
        let plain: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(31)).collect();
        let mut masked: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        unmask(&mut masked, MASK);
        assert_eq!(masked, plain, "length {len}");
    }
}

#[tokio::test]
async fn text_messages_of_every_length_class_arrive_whole_and_leave_nothing_allocated() {
    for len in [0, 1, 125, 126, 65535, 65536, 100_000] {
        let (mut ws, mut client) = pair(1 << 20);
        let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        client
            .write_all(&frame(true, TEXT, text.as_bytes()))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Text(text));
        assert_idle(&ws);
    }
}

#[tokio::test]
async fn the_server_frames_lengths_125_126_65535_65536_with_the_right_header() {
    for (len, header) in [(125, 2), (126, 4), (65535, 4), (65536, 10)] {
        let (mut ws, mut client) = pair(1024);
        let text = "x".repeat(len);
        ws.feed_text(&text).unwrap();
        assert_eq!(ws.pending(), header + len);
        flush(&mut ws).await;
        assert_idle(&ws);
        let (fin, opcode, payload) = read_frame(&mut client).await;
        assert!(fin);
        assert_eq!(opcode, TEXT);
        assert_eq!(payload, text.as_bytes());
    }
}

#[tokio::test]
async fn a_burst_of_messages_goes_out_in_order_in_one_flush() {
    let (mut ws, mut client) = pair(1024);
    for i in 0..3 {
        ws.feed_text(&format!("m{i}")).unwrap();
    }
    flush(&mut ws).await;
    for i in 0..3 {
        assert_eq!(read_frame(&mut client).await.2, format!("m{i}").as_bytes());
    }
}

#[tokio::test]
async fn pipelined_messages_in_one_write_are_read_one_by_one() {
    let (mut ws, mut client) = pair(1 << 16);
    let mut bytes = Vec::new();
    for text in ["a", "", "a longer message of some forty bytes....", "b"] {
        bytes.extend(frame(true, TEXT, text.as_bytes()));
    }
    client.write_all(&bytes).await.unwrap();
    for text in ["a", "", "a longer message of some forty bytes....", "b"] {
        assert_eq!(
            next(&mut ws).await.unwrap().unwrap(),
            Incoming::Text(text.into())
        );
    }
}

#[tokio::test]
async fn a_message_sent_one_byte_at_a_time_arrives_whole() {
    let (mut ws, client) = pair(1 << 16);
    let text = "x".repeat(300);
    let bytes = [frame(true, TEXT, text.as_bytes()), frame(true, TEXT, b"y")].concat();
    let writer = tokio::spawn(async move {
        let mut client = client;
        for b in bytes {
            client.write_all(&[b]).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Text(text));
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Incoming::Text("y".into())
    );
    writer.await.unwrap();
}

#[tokio::test]
async fn fragments_are_reassembled_and_a_ping_between_them_is_answered() {
    let (mut ws, mut client) = pair(1 << 16);
    let bytes = [
        frame(false, TEXT, b"hel"),
        frame(true, PING, b"are you there"),
        frame(false, CONTINUATION, b"lo "),
        frame(true, PONG, b"unsolicited"),
        frame(true, CONTINUATION, "wörld".as_bytes()),
    ]
    .concat();
    client.write_all(&bytes).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Incoming::Text("hello wörld".into())
    );
    assert_eq!(
        read_frame(&mut client).await,
        (true, PONG, b"are you there".to_vec())
    );
    assert_idle(&ws);
}

#[tokio::test]
async fn utf8_split_across_fragments_is_valid() {
    let (mut ws, mut client) = pair(1 << 16);
    let bytes = "é".as_bytes();
    let all = [
        frame(false, TEXT, &bytes[..1]),
        frame(true, CONTINUATION, &bytes[1..]),
    ]
    .concat();
    client.write_all(&all).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Incoming::Text("é".into())
    );
}

#[tokio::test]
async fn binary_messages_are_read_and_dropped() {
    let (mut ws, mut client) = pair(1 << 16);
    let bytes = [
        frame(false, BINARY, &[0xff; 10]),
        frame(true, CONTINUATION, &[0; 5]),
    ]
    .concat();
    client.write_all(&bytes).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Binary(15));
    assert_idle(&ws);
}

#[tokio::test]
async fn a_close_is_echoed_with_its_code_and_ends_reading() {
    let (mut ws, mut client) = pair(1024);
    client
        .write_all(&frame(true, CLOSE, &close_payload(1000, b"bye")))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Close);
    assert!(next(&mut ws).await.is_none());
    assert!(matches!(ws.feed_text("late"), Err(Error::Closing)));
    ws.close().await.unwrap();
    assert_eq!(read_close(&mut client).await, Some(1000));
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "one close frame, then the end: {rest:?}");
}

#[tokio::test]
async fn an_empty_close_is_echoed_empty() {
    let (mut ws, mut client) = pair(1024);
    client.write_all(&frame(true, CLOSE, &[])).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Incoming::Close);
    ws.close().await.unwrap();
    assert_eq!(read_close(&mut client).await, None);
}

#[tokio::test]
async fn the_relay_closes_with_a_code_and_reason_once() {
    let (mut ws, mut client) = pair(1024);
    ws.send_close(Some((code::GOING_AWAY, "relay shutting down")))
        .await
        .unwrap();
    ws.close().await.unwrap();
    let (_, opcode, payload) = read_frame(&mut client).await;
    assert_eq!(opcode, CLOSE);
    assert_eq!(payload, close_payload(1001, b"relay shutting down"));
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_long_close_reason_is_cut_to_fit_a_control_frame() {
    let (mut ws, mut client) = pair(1024);
    ws.send_close(Some((1001, &"é".repeat(100)))).await.unwrap();
    let (_, _, payload) = read_frame(&mut client).await;
    assert!(payload.len() <= 125);
    assert!(std::str::from_utf8(&payload[2..]).is_ok());
}

#[tokio::test]
async fn close_frames_that_break_the_rules_get_1002_or_1007() {
    rejected(&frame(true, CLOSE, &[3]), 1024, 1002).await;
    for bad in [0, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
        rejected(&frame(true, CLOSE, &close_payload(bad, b"")), 1024, 1002).await;
    }
    rejected(
        &frame(true, CLOSE, &close_payload(1000, &[0xff])),
        1024,
        1007,
    )
    .await;
}

#[tokio::test]
async fn protocol_errors_get_1002() {
    // Not masked.
    rejected(&raw_frame(0x81, b"hi", None), 1024, 1002).await;
    // Reserved bits.
    for rsv in [0x40, 0x20, 0x10] {
        rejected(&raw_frame(0x81 | rsv, b"hi", Some(MASK)), 1024, 1002).await;
    }
    // Unknown opcodes.
    for opcode in [0x3, 0x7, 0xB, 0xF] {
        rejected(&frame(true, opcode, b""), 1024, 1002).await;
    }
    // Control frames: longer than 125 bytes, or fragmented.
    rejected(&frame(true, PING, &[0; 126]), 1 << 16, 1002).await;
    rejected(&frame(false, PING, b""), 1024, 1002).await;
    rejected(&frame(false, CLOSE, b""), 1024, 1002).await;
    // A continuation with nothing to continue; a new message inside a fragmented one.
    rejected(&frame(true, CONTINUATION, b"x"), 1024, 1002).await;
    rejected(
        &[frame(false, TEXT, b"a"), frame(true, TEXT, b"b")].concat(),
        1024,
        1002,
    )
    .await;
    // A 64-bit length with its most significant bit set.
    let mut huge = vec![0x81, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge.extend_from_slice(&MASK);
    rejected(&huge, usize::MAX, 1002).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_message_gets_1007() {
    rejected(&frame(true, TEXT, &[b'a', 0xc3]), 1024, 1007).await;
    rejected(
        &[
            frame(false, TEXT, b"ok"),
            frame(true, CONTINUATION, &[0xff]),
        ]
        .concat(),
        1024,
        1007,
    )
    .await;
}

#[tokio::test]
async fn a_message_over_the_limit_gets_1009_before_its_payload_is_allocated() {
    // One frame: only its header is sent, the limit is checked on it.
    let header = &frame(true, TEXT, &[0; 1025])[..8];
    rejected(header, 1024, 1009).await;
    // Fragments that add up to more than the limit.
    rejected(
        &[
            frame(false, TEXT, &[b'a'; 600]),
            frame(true, CONTINUATION, &[b'a'; 600]),
        ]
        .concat(),
        1024,
        1009,
    )
    .await;
    // At the limit: accepted.
    let (mut ws, mut client) = pair(1024);
    client
        .write_all(&frame(true, TEXT, &[b'a'; 1024]))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut ws).await,
        Some(Ok(Incoming::Text(t))) if t.len() == 1024
    ));
}

#[tokio::test]
async fn a_header_claiming_a_large_frame_reserves_little_until_its_bytes_arrive() {
    let (mut ws, mut client) = pair(4 << 20);
    let payload = vec![b'a'; 3 << 20];
    let whole = frame(true, TEXT, &payload);
    // The header (with the mask) and a few bytes of the 3 MiB payload.
    client.write_all(&whole[..14 + 100]).await.unwrap();
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for _ in 0..10 {
        assert!(ws.poll_next(&mut cx).is_pending());
        tokio::task::yield_now().await;
    }
    assert!(
        ws.message.capacity() <= UPFRONT + MAX_HEAD,
        "{} bytes reserved for 100 received",
        ws.message.capacity()
    );
    // The rest arrives: the message is whole.
    let writer = tokio::spawn(async move {
        client.write_all(&whole[14 + 100..]).await.unwrap();
        client
    });
    match next(&mut ws).await {
        Some(Ok(Incoming::Text(t))) => assert_eq!(t.as_bytes(), &payload[..]),
        other => panic!("{other:?}"),
    }
    let _client = writer.await.unwrap();
}

#[tokio::test]
async fn the_end_of_the_stream_without_a_close_is_an_error() {
    let (mut ws, mut client) = pair(1024);
    client
        .write_all(&frame(true, TEXT, b"abc")[..5])
        .await
        .unwrap();
    drop(client);
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Io(_)))));
    assert!(next(&mut ws).await.is_none());

    let (mut ws, client) = pair(1024);
    drop(client);
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Io(_)))));
}

#[tokio::test]
async fn a_client_that_does_not_read_makes_poll_ready_wait() {
    let (server, mut client) = duplex(4096);
    let mut ws = WebSocket::new(server, 1024);
    let text = "x".repeat(1000);
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fed = 0;
    while ws.poll_ready(&mut cx).is_ready() {
        ws.feed_text(&text).unwrap();
        fed += 1;
        assert!(fed < 1000, "poll_ready never waited");
    }
    assert!(ws.pending() >= WRITE_CHUNK - 4096);
    // The client reads: everything arrives, in order and whole.
    let reader = tokio::spawn(async move {
        for _ in 0..fed {
            assert_eq!(read_frame(&mut client).await.2.len(), 1000);
        }
    });
    flush(&mut ws).await;
    reader.await.unwrap();
    assert_idle(&ws);
}

#[tokio::test]
async fn pings_from_a_client_that_does_not_read_queue_a_bounded_backlog() {
    let (server, client) = duplex(4096);
    let mut ws = WebSocket::new(server, 1024);
    let (_unread, mut client_tx) = tokio::io::split(client);
    let pings = 10_000;
    let writer = tokio::spawn(async move {
        for _ in 0..pings {
            client_tx
                .write_all(&frame(true, PING, &[7; MAX_CONTROL]))
                .await
                .unwrap();
        }
        client_tx
            .write_all(&frame(true, TEXT, b"end"))
            .await
            .unwrap();
        client_tx
    });
    // Every ping is read (the text after them arrives), none of the pongs is.
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Incoming::Text("end".into())
    );
    let _client_tx = writer.await.unwrap();
    assert!(
        ws.pending() <= WRITE_CHUNK + MAX_CONTROL + 2,
        "{} bytes of pongs wait for a client that does not read",
        ws.pending()
    );
}

#[test]
fn the_accept_key_is_the_rfc_example() {
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn an_upgrade_request_needs_get_upgrade_headers_version_13_and_a_key() {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
    headers.insert(header::UPGRADE, "WebSocket".parse().unwrap());
    headers.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
    headers.insert(header::SEC_WEBSOCKET_KEY, "a2V5".parse().unwrap());
    let key = upgrade_request(&Method::GET, Version::HTTP_11, &headers);
    assert_eq!(key, Some(&b"a2V5"[..]));
    assert!(upgrade_request(&Method::POST, Version::HTTP_11, &headers).is_none());
    assert!(upgrade_request(&Method::GET, Version::HTTP_2, &headers).is_none());
    for (name, value) in [
        (header::CONNECTION, "keep-alive"),
        (header::UPGRADE, "h2c"),
        (header::SEC_WEBSOCKET_VERSION, "8"),
    ] {
        let mut h = headers.clone();
        h.insert(name, value.parse().unwrap());
        assert!(upgrade_request(&Method::GET, Version::HTTP_11, &h).is_none());
    }
    let mut h = headers.clone();
    h.remove(header::SEC_WEBSOCKET_KEY);
    assert!(upgrade_request(&Method::GET, Version::HTTP_11, &h).is_none());
}
