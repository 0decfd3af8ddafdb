//! GgufWriter -> GgufFile round trips, MappedGguf, typed getters and the
//! writer's validation.

mod common;

use common::{Raw, Rng, sample_metadata, sample_tensor_shapes, sample_writer, scratch};
use spinel_quant::GgmlType;
use spinel_runtime::gguf::{Array, GgufError, GgufFile, GgufWriter, MappedGguf, Value, ValueType};

#[test]
fn sample_round_trips_bit_for_bit() {
    let bytes = sample_writer().to_bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.bytes().len(), bytes.len());

    // Metadata: same keys, values and order.
    let got: Vec<(&str, Value<'_>)> = f.metadata().iter().map(|(k, v)| (k, v.clone())).collect();
    assert_eq!(got, sample_metadata());
    for (k, v) in sample_metadata() {
        assert_eq!(f.metadata().get(k), Some(&v), "{k}");
    }

    // Tensors: same names, dims, types, data, in order, laid out one after
    // another at aligned offsets.
    let mut rng = Rng(7);
    let mut expect_offset = 0u64;
    assert_eq!(f.tensors().len(), sample_tensor_shapes().len());
    for (t, (name, dims, ty)) in f.tensors().iter().zip(sample_tensor_shapes()) {
        assert_eq!(t.name(), name);
        assert_eq!(t.dims(), dims);
        assert_eq!(t.ggml_type(), ty);
        let n: u64 = dims.iter().product();
        assert_eq!(t.n_elements(), n);
        assert_eq!(t.data(), rng.bytes(ty.row_size(n as usize).unwrap()));
        assert_eq!(t.offset(), expect_offset);
        expect_offset += (t.size() as u64).div_ceil(32) * 32;
        // The view is where the offset says.
        let at = t.data().as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(at, f.data_offset() + t.offset() as usize);
        assert_eq!(f.tensor(name).unwrap().name(), name);
    }
    // Every tensor is padded, the last one included.
    assert_eq!(bytes.len() as u64, f.data_offset() as u64 + expect_offset);
    assert!(f.tensor("nope").is_none());

    // Writing what was read gives the same bytes.
    let again = GgufWriter::from_file(&f).unwrap().to_bytes();
    assert!(again == bytes, "re-written file differs");
}

#[test]
fn mapped_file_matches_parse() {
    let path = scratch("mapped.gguf");
    sample_writer().write_file(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let parsed = GgufFile::parse(&bytes).unwrap();
    // SAFETY: the test owns the scratch file and does not change it.
    let mapped = unsafe { MappedGguf::open(&path) }.unwrap();
    let m = mapped.file();
    assert_eq!(mapped.path(), path);
    assert_eq!(mapped.len(), bytes.len());
    assert_eq!(m.data_offset(), parsed.data_offset());
    assert!(m.metadata().iter().eq(parsed.metadata().iter()));
    for (a, b) in m.tensors().iter().zip(parsed.tensors()) {
        assert_eq!(
            (a.name(), a.dims(), a.ggml_type()),
            (b.name(), b.dims(), b.ggml_type())
        );
        assert_eq!(a.data(), b.data());
    }
    // The mapping survives moving the owner.
    let moved = Box::new(mapped);
    assert_eq!(moved.file().tensors()[0].data(), parsed.tensors()[0].data());
    drop(moved);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn mapping_errors_name_the_file() {
    let missing = scratch("does-not-exist.gguf");
    // SAFETY: nothing is mapped.
    let e = unsafe { MappedGguf::open(&missing) }.unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("does-not-exist.gguf"), "{e}");

    let empty = scratch("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    // SAFETY: the test owns the file and does not change it.
    let e = unsafe { MappedGguf::open(&empty) }.unwrap_err();
    assert!(matches!(e, GgufError::Truncated { offset: 0, .. }), "{e:?}");
    std::fs::remove_file(&empty).unwrap();
}

#[test]
fn typed_getters_name_key_and_types() {
    let bytes = sample_writer().to_bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    let m = f.metadata();
    assert_eq!(m.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(m.get_u8("test.u8").unwrap(), 255);
    assert_eq!(m.get_i8("test.i8").unwrap(), -128);
    assert_eq!(m.get_u16("test.u16").unwrap(), 0xbeef);
    assert_eq!(m.get_i16("test.i16").unwrap(), -12345);
    assert_eq!(m.get_u32("test.u32").unwrap(), u32::MAX);
    assert_eq!(m.get_i32("test.i32").unwrap(), i32::MIN);
    assert_eq!(m.get_u64("test.u64").unwrap(), u64::MAX);
    assert_eq!(m.get_i64("test.i64").unwrap(), i64::MIN);
    assert_eq!(m.get_f32("test.f32").unwrap(), 1e-5);
    assert_eq!(m.get_f64("test.f64").unwrap(), std::f64::consts::PI);
    assert!(m.get_bool("test.bool_true").unwrap());
    assert_eq!(m.get_uint("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(m.get_uint("test.u8").unwrap(), 255);
    assert_eq!(
        m.get_array_of::<u32>("test.arr_u32").unwrap(),
        [1, 2, 3, u32::MAX]
    );
    assert_eq!(
        m.get_array_of::<bool>("test.arr_bool").unwrap(),
        [true, false, true]
    );
    assert_eq!(
        m.get_str_array("test.arr_str").unwrap().collect::<Vec<_>>(),
        ["<unk>", "", "Ġthe", "日本"]
    );
    let nested = m.get_array("test.arr_nested").unwrap();
    assert_eq!(nested.elem_type(), ValueType::Array);
    let inner = nested.arrays().unwrap();
    assert_eq!(inner[0].to_vec::<u8>().unwrap(), [1, 2]);
    assert_eq!(inner[1].strings().unwrap().collect::<Vec<_>>(), ["a", "bc"]);
    assert!(inner[2].is_empty());
    assert_eq!(inner[3].arrays().unwrap()[0].to_vec::<i64>().unwrap(), [7]);

    let e = m.get_u32("general.architecture").unwrap_err();
    assert!(matches!(e, GgufError::WrongType { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "metadata \"general.architecture\" is STRING, expected UINT32"
    );
    let e = m.get_u32("test.i32").unwrap_err();
    assert_eq!(
        e.to_string(),
        "metadata \"test.i32\" is INT32, expected UINT32"
    );
    let e = m.get_uint("test.i8").unwrap_err();
    assert!(
        e.to_string().contains("expected a non-negative integer"),
        "{e}"
    );
    let e = m.get_array_of::<u32>("test.arr_str").unwrap_err();
    assert_eq!(
        e.to_string(),
        "metadata \"test.arr_str\" is ARRAY of STRING, expected ARRAY of UINT32"
    );
    let Err(e) = m.get_str_array("test.arr_u8") else {
        panic!("an array of UINT8 read as strings")
    };
    assert!(e.to_string().contains("ARRAY of UINT8"), "{e}");
    let e = m.get_str("test.arr_str").unwrap_err();
    assert!(
        e.to_string()
            .contains("is ARRAY of STRING, expected STRING"),
        "{e}"
    );
    let e = m.get_array("test.u8").unwrap_err();
    assert!(e.to_string().contains("is UINT8, expected ARRAY"), "{e}");
    let e = m.get_str("llama.context_length").unwrap_err();
    assert!(matches!(e, GgufError::MissingKey { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "metadata key \"llama.context_length\" is missing"
    );
}

#[test]
fn alignment_is_honoured() {
    for align in [1u32, 8, 64, 4096] {
        let mut w = sample_writer();
        w.set_alignment(align).unwrap();
        let bytes = w.to_bytes();
        let f = GgufFile::parse(&bytes).unwrap();
        assert_eq!(f.alignment(), align as usize);
        assert_eq!(f.metadata().get_u32("general.alignment").unwrap(), align);
        assert_eq!(f.data_offset() % align as usize, 0);
        for t in f.tensors() {
            assert_eq!(t.offset() % u64::from(align), 0, "{}", t.name());
        }
        assert!(GgufWriter::from_file(&f).unwrap().to_bytes() == bytes);
    }
    // set_alignment replaces the key in place.
    let mut w = GgufWriter::new();
    w.set_alignment(16).unwrap().set_alignment(128).unwrap();
    let bytes = w.to_bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.metadata().len(), 1);
    assert_eq!(f.alignment(), 128);

    let mut w = GgufWriter::new();
    let e = w.set_alignment(24).unwrap_err();
    assert!(
        matches!(e, GgufError::BadAlignment { alignment: 24 }),
        "{e:?}"
    );
    let e = w.set_alignment(0).unwrap_err();
    assert!(
        matches!(e, GgufError::BadAlignment { alignment: 0 }),
        "{e:?}"
    );
    let e = w.add_kv("general.alignment", 64u64).unwrap_err();
    assert!(matches!(e, GgufError::AlignmentType { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "general.alignment must be a UINT32, found UINT64"
    );
    assert_eq!(w.alignment(), 32);
}

#[test]
fn writer_refuses_bad_input() {
    let mut w = GgufWriter::new();
    w.add_kv("a", 1u8).unwrap();
    let e = w.add_kv("a", 2u8).unwrap_err();
    assert!(
        matches!(e, GgufError::DuplicateKey { offset: None, .. }),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "duplicate metadata key \"a\"");

    w.add_tensor("t", &[4], GgmlType::F32, vec![0u8; 16])
        .unwrap();
    let e = w
        .add_tensor("t", &[4], GgmlType::F32, vec![0u8; 16])
        .unwrap_err();
    assert!(matches!(e, GgufError::DuplicateTensor { .. }), "{e:?}");
    let e = w
        .add_tensor("u", &[4], GgmlType::F32, vec![0u8; 15])
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::TensorDataSize {
                expected: 16,
                actual: 15,
                ..
            }
        ),
        "{e:?}"
    );
    let e = w
        .add_tensor("u", &[33], GgmlType::Q4_0, vec![])
        .unwrap_err();
    assert!(
        matches!(e, GgufError::RowNotBlockMultiple { ne0: 33, .. }),
        "{e:?}"
    );
    let e = w
        .add_tensor("u", &[4, 0], GgmlType::F32, vec![])
        .unwrap_err();
    assert!(matches!(e, GgufError::ZeroDim { dim: 1, .. }), "{e:?}");
    let e = w
        .add_tensor("u", &[1; 5], GgmlType::F32, vec![])
        .unwrap_err();
    assert!(
        matches!(e, GgufError::TooManyDims { n_dims: 5, .. }),
        "{e:?}"
    );
    let e = w
        .add_tensor("u", &[1 << 32, 1 << 32], GgmlType::F32, vec![])
        .unwrap_err();
    assert!(matches!(e, GgufError::SizeOverflow { .. }), "{e:?}");
    let long = "x".repeat(64);
    let e = w
        .add_tensor(long, &[4], GgmlType::F32, vec![0u8; 16])
        .unwrap_err();
    assert!(
        matches!(e, GgufError::TensorNameTooLong { len: 64, .. }),
        "{e:?}"
    );
    // Nothing of the refused tensors was added.
    let bytes = w.to_bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.tensors().len(), 1);
    assert_eq!(f.metadata().len(), 1);
}

#[test]
fn version_2_reads_like_version_3() {
    let mut bytes = sample_writer().to_bytes();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = GgufFile::parse(&bytes).unwrap();
    assert_eq!(v2.version(), 2);
    let v3_bytes = sample_writer().to_bytes();
    let v3 = GgufFile::parse(&v3_bytes).unwrap();
    assert!(v2.metadata().iter().eq(v3.metadata().iter()));
    assert_eq!(v2.tensors().len(), v3.tensors().len());
    // Re-writing a v2 file gives the v3 file.
    assert!(GgufWriter::from_file(&v2).unwrap().to_bytes() == v3_bytes);
}

#[test]
fn tensors_may_come_in_any_order_with_gaps() {
    // Two F32 tensors; the second in the file comes first in the data, and
    // there is an unused aligned gap in between.
    let mut r = Raw::header(3, 2, 1);
    r.kv_str("general.architecture", "llama");
    r.tensor("late", &[4], 0, 64).tensor("early", &[2, 2], 0, 0);
    r.pad(32);
    let data_offset = r.0.len();
    r.bytes(&[1; 16]).zeros(48).bytes(&[2; 16]);
    let bytes = r.done();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.data_offset(), data_offset);
    assert_eq!(f.tensors()[0].name(), "late");
    assert_eq!(f.tensors()[0].data(), [2; 16]);
    assert_eq!(f.tensors()[1].offset(), 0);
    assert_eq!(f.tensors()[1].data(), [1; 16]);
    assert_eq!(f.tensors()[1].dims(), [2, 2]);
}

#[test]
fn file_without_tensors_needs_no_padding() {
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("general.alignment", 4096);
    let bytes = r.done();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.alignment(), 4096);
    assert_eq!(f.data_offset(), 4096);
    assert!(f.data().is_empty());
    assert!(f.tensors().is_empty());
}

#[test]
fn tensor_without_dims_is_a_scalar() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("scale", &[], 0, 0)
        .pad(32)
        .bytes(&1.5f32.to_le_bytes());
    let bytes = r.done();
    let f = GgufFile::parse(&bytes).unwrap();
    let t = &f.tensors()[0];
    assert_eq!(t.dims(), &[] as &[u64]);
    assert_eq!(t.n_elements(), 1);
    assert_eq!(t.data(), 1.5f32.to_le_bytes());
    // And the writer writes it the same way.
    assert!(GgufWriter::from_file(&f).unwrap().to_bytes()[..bytes.len()] == bytes[..]);
}

#[test]
fn borrowed_writer_copies_a_file_without_owning_data() {
    let src = sample_writer().to_bytes();
    let f = GgufFile::parse(&src).unwrap();
    let mut w = GgufWriter::from_file(&f).unwrap();
    w.add_kv("general.note", String::from("copied"))
        .unwrap()
        .add_kv("general.list", Array::from_strings(vec![String::from("x")]))
        .unwrap();
    let out = w.to_bytes();
    let g = GgufFile::parse(&out).unwrap();
    assert_eq!(g.metadata().len(), f.metadata().len() + 2);
    assert_eq!(g.metadata().get_str("general.note").unwrap(), "copied");
    for (a, b) in f.tensors().iter().zip(g.tensors()) {
        assert_eq!(a.data(), b.data());
    }
}

#[test]
fn metadata_values_can_be_owned() {
    let bytes = sample_writer().to_bytes();
    let owned: Vec<(String, Value<'static>)> = {
        let f = GgufFile::parse(&bytes).unwrap();
        f.metadata()
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone().into_owned()))
            .collect()
    };
    drop(bytes);
    let expect: Vec<(String, Value<'static>)> = sample_metadata()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(owned, expect);
}

#[test]
fn debug_output_summarizes() {
    let bytes = sample_writer().to_bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    let d = format!("{f:?}");
    assert!(
        d.contains("version: 3") && d.contains("\"general.architecture\""),
        "{d}"
    );
    assert!(
        d.contains("name: \"blk.0.attn_q.weight\", dims: [32, 2], type: Q4_0"),
        "{d}"
    );
    // Neither the file's bytes nor the tensor data are dumped.
    assert!(d.len() < 4000, "{} bytes of Debug output", d.len());
}
