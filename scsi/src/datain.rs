//! Moving command data: ALLOCATION LENGTH truncation for every data-in
//! response (done once, here) and reading data-out.

use crate::target::{DataIn, DataOut, TransportError};

/// Write the response `data` to `data_in`, truncated to the command's
/// ALLOCATION LENGTH (when it has one) and to the initiator's buffer.
/// Returns the number of bytes written.
pub fn complete_data_in(
    data: &[u8],
    alloc_len: Option<u64>,
    data_in: &mut DataIn<'_>,
) -> Result<usize, TransportError> {
    let mut n = data.len().min(data_in.len);
    if let Some(al) = alloc_len {
        n = n.min(usize::try_from(al).unwrap_or(usize::MAX));
    }
    if n > 0 {
        data_in
            .writer
            .write_all(&data[..n])
            .map_err(TransportError::DataIn)?;
    }
    Ok(n)
}

/// Read exactly `n` bytes of data-out. A data-out buffer shorter than the
/// CDB says is a transport error (the transport reports an overrun).
pub fn read_data_out(data_out: &mut DataOut<'_>, n: usize) -> Result<Vec<u8>, TransportError> {
    if n > data_out.len {
        return Err(TransportError::DataOut(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "command needs {n} bytes of data-out, buffer has {}",
                data_out.len
            ),
        )));
    }
    let mut v = vec![0u8; n];
    data_out
        .reader
        .read_exact(&mut v)
        .map_err(TransportError::DataOut)?;
    Ok(v)
}

/// Read exactly `buf.len()` bytes of data-out into `buf`.
pub fn read_data_out_into(
    data_out: &mut DataOut<'_>,
    buf: &mut [u8],
) -> Result<(), TransportError> {
    if buf.len() > data_out.len {
        return Err(TransportError::DataOut(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "command needs {} bytes of data-out, buffer has {}",
                buf.len(),
                data_out.len
            ),
        )));
    }
    data_out
        .reader
        .read_exact(buf)
        .map_err(TransportError::DataOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_to_allocation_length_and_buffer() {
        let data = [1u8, 2, 3, 4, 5];
        let mut sink = Vec::new();
        let n = complete_data_in(
            &data,
            Some(3),
            &mut DataIn {
                writer: &mut sink,
                len: 100,
            },
        )
        .unwrap();
        assert_eq!((n, sink.as_slice()), (3, &[1u8, 2, 3][..]));
        let mut sink = Vec::new();
        let n = complete_data_in(
            &data,
            Some(100),
            &mut DataIn {
                writer: &mut sink,
                len: 2,
            },
        )
        .unwrap();
        assert_eq!((n, sink.as_slice()), (2, &[1u8, 2][..]));
        let mut sink = Vec::new();
        let n = complete_data_in(
            &data,
            None,
            &mut DataIn {
                writer: &mut sink,
                len: 100,
            },
        )
        .unwrap();
        assert_eq!(n, 5);
    }

    #[test]
    fn short_data_out_is_a_transport_error() {
        let mut src: &[u8] = &[1, 2];
        let mut out = DataOut {
            reader: &mut src,
            len: 2,
        };
        assert!(matches!(
            read_data_out(&mut out, 3),
            Err(TransportError::DataOut(_))
        ));
        assert_eq!(read_data_out(&mut out, 2).unwrap(), vec![1, 2]);
    }
}
