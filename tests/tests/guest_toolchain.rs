//! The test-guest toolchain: every guest is built, carries a PVH entry note,
//! and contains no x87/MMX/SSE/AVX instruction.

use arbiter_tests::guests;

#[test]
fn every_guest_is_built_with_a_pvh_note() {
    let names = guests::all();
    assert!(
        names.contains(&"hello".to_owned()),
        "guests built: {names:?}"
    );
    for name in names {
        let elf = std::fs::read(guests::path(&name)).unwrap();
        assert_eq!(&elf[..4], b"\x7fELF", "{name}: not an ELF");
        assert_eq!(elf[4], 2, "{name}: not ELF64");
        // The note: namesz 4, descsz 8, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0".
        let note: &[u8] = &[4, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0];
        let pos = elf.windows(note.len()).position(|w| w == note);
        let pos = pos.unwrap_or_else(|| panic!("{name}: no PVH entry note"));
        let entry = u64::from_le_bytes(elf[pos + 16..pos + 24].try_into().unwrap());
        assert_eq!(
            entry, 0x10_0000,
            "{name}: PVH entry is not the start of .text at 1 MiB"
        );
    }
}

#[test]
fn guests_contain_no_floating_point_or_vector_instructions() {
    for name in guests::all() {
        let bad = guests::check_integer_only(&guests::path(&name)).expect("objdump runs");
        assert!(
            bad.is_empty(),
            "{name} contains x87/SSE instructions:\n{bad:#?}"
        );
    }
}

#[test]
fn the_checker_catches_x87_and_sse() {
    // Fake objdump lines in the format `objdump -d -w` prints.
    let sample = "\
  100000:\tfa                   \tcli
  100001:\td9 ee                \tfldz
  100003:\t66 0f ef c0          \tpxor   %xmm0,%xmm0
  100007:\t0f ae 10             \tldmxcsr (%rax)
  10000a:\tf3 48 ab             \trep stos %rax,%es:(%rdi)
  10000d:\t0f 77                \temms
";
    let bad = guests::forbidden_instructions(sample);
    let lines: Vec<&str> = bad
        .iter()
        .map(|b| b.line.rsplit('\t').next().unwrap())
        .collect();
    assert_eq!(
        lines,
        ["fldz", "pxor   %xmm0,%xmm0", "ldmxcsr (%rax)", "emms"]
    );
}
