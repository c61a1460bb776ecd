using System.Buffers.Binary;
using System.Text;

namespace PagSharp.IO;

/// <summary>
/// A restricted pickle reader for PyTorch state dicts. It understands only the opcodes <c>torch.save</c> emits for
/// tensors, lists, tuples, dicts and scalars, resolves only an allow-list of globals (OrderedDict, the tensor rebuild
/// helpers and the storage classes), and never imports, calls or instantiates anything else. Every problem raises a
/// <see cref="PagSharpException"/> naming the file and the byte offset.
/// </summary>
internal sealed class SafeUnpickler
{
    private readonly byte[] _data;
    private readonly string _file;
    private readonly string _entry;
    private readonly Func<object?, object?> _persistentLoad;
    private readonly List<object?> _stack = [];
    private readonly Stack<int> _marks = new();
    private readonly Dictionary<long, object?> _memo = [];
    private int _pos;
    private int _opStart;

    /// <summary>Deepest mark nesting accepted; real state dicts use two or three levels.</summary>
    public const int MaxMarkDepth = 1000;

    /// <param name="data">The pickle bytes.</param>
    /// <param name="file">The file they come from, for messages.</param>
    /// <param name="entry">The zip entry they come from, for messages.</param>
    /// <param name="persistentLoad">Turns a BINPERSID id into a value; it must throw a PagSharpException for bad ids.</param>
    public SafeUnpickler(byte[] data, string file, string entry, Func<object?, object?> persistentLoad)
    {
        _data = data;
        _file = file;
        _entry = entry;
        _persistentLoad = persistentLoad;
    }

    /// <summary>Runs the pickle to its STOP opcode and returns the value it built.</summary>
    public object? Load()
    {
        while (true)
        {
            _opStart = _pos;
            byte op = ReadByte();
            switch (op)
            {
                case 0x80: // PROTO
                    byte proto = ReadByte();
                    if (proto > 5) throw Error($"pickle protocol {proto} is not supported (0 to 5 are)");
                    break;
                case 0x95: // FRAME: framing is only a hint for buffered readers; the data follows inline.
                    Take(8);
                    break;
                case 0x2e: // STOP
                    if (_stack.Count == 0) throw Error("STOP with an empty stack");
                    return Pop();

                case 0x28: // MARK
                    if (_marks.Count >= MaxMarkDepth) throw Error($"more than {MaxMarkDepth} nested MARKs");
                    _marks.Push(_stack.Count);
                    break;
                case 0x30: // POP
                    Pop();
                    break;
                case 0x31: // POP_MARK
                    PopMark();
                    break;

                case 0x4e: Push(null); break;          // NONE
                case 0x88: Push(true); break;          // NEWTRUE
                case 0x89: Push(false); break;         // NEWFALSE
                case 0x4a: Push((long)BinaryPrimitives.ReadInt32LittleEndian(Take(4))); break;   // BININT
                case 0x4b: Push((long)ReadByte()); break;                                        // BININT1
                case 0x4d: Push((long)BinaryPrimitives.ReadUInt16LittleEndian(Take(2))); break;  // BININT2
                case 0x8a: Push(ReadLong1()); break;                                             // LONG1
                case 0x47: Push(BinaryPrimitives.ReadDoubleBigEndian(Take(8))); break;           // BINFLOAT

                case 0x58: Push(ReadUtf8(BinaryPrimitives.ReadUInt32LittleEndian(Take(4)))); break; // BINUNICODE
                case 0x8c: Push(ReadUtf8(ReadByte())); break;                                       // SHORT_BINUNICODE
                case 0x8d: Push(ReadUtf8(BinaryPrimitives.ReadUInt64LittleEndian(Take(8)))); break; // BINUNICODE8
                case 0x54: // BINSTRING (signed length)
                    int slen = BinaryPrimitives.ReadInt32LittleEndian(Take(4));
                    if (slen < 0) throw Error($"negative string length {slen}");
                    Push(new PickleBytes(TakeLength((ulong)slen).ToArray()));
                    break;
                case 0x55: Push(new PickleBytes(TakeLength(ReadByte()).ToArray())); break;                               // SHORT_BINSTRING
                case 0x42: Push(new PickleBytes(TakeLength(BinaryPrimitives.ReadUInt32LittleEndian(Take(4))).ToArray())); break; // BINBYTES
                case 0x43: Push(new PickleBytes(TakeLength(ReadByte()).ToArray())); break;                               // SHORT_BINBYTES

                case 0x7d: Push(new PickleDict()); break;     // EMPTY_DICT
                case 0x5d: Push(new List<object?>()); break;  // EMPTY_LIST
                case 0x29: Push(new PickleTuple([])); break;  // EMPTY_TUPLE
                case 0x64: // DICT
                {
                    List<object?> items = PopMark();
                    if (items.Count % 2 != 0) throw Error("DICT with an odd number of items");
                    var d = new PickleDict();
                    for (int i = 0; i < items.Count; i += 2) d.Set(items[i], items[i + 1]);
                    Push(d);
                    break;
                }
                case 0x6c: Push(PopMark()); break;                            // LIST
                case 0x74: Push(new PickleTuple(PopMark().ToArray())); break; // TUPLE
                case 0x85: Push(new PickleTuple([Pop()])); break;             // TUPLE1
                case 0x86: // TUPLE2
                {
                    object? b = Pop(), a = Pop();
                    Push(new PickleTuple([a, b]));
                    break;
                }
                case 0x87: // TUPLE3
                {
                    object? c = Pop(), b = Pop(), a = Pop();
                    Push(new PickleTuple([a, b, c]));
                    break;
                }
                case 0x73: // SETITEM
                {
                    object? v = Pop(), k = Pop();
                    AsDict(Peek(), "SETITEM").Set(k, v);
                    break;
                }
                case 0x75: // SETITEMS
                {
                    List<object?> items = PopMark();
                    if (items.Count % 2 != 0) throw Error("SETITEMS with an odd number of items");
                    PickleDict d = AsDict(Peek(), "SETITEMS");
                    for (int i = 0; i < items.Count; i += 2) d.Set(items[i], items[i + 1]);
                    break;
                }
                case 0x61: // APPEND
                {
                    object? v = Pop();
                    AsList(Peek(), "APPEND").Add(v);
                    break;
                }
                case 0x65: // APPENDS
                {
                    List<object?> items = PopMark();
                    AsList(Peek(), "APPENDS").AddRange(items);
                    break;
                }

                case 0x71: Memo(ReadByte()); break;                                       // BINPUT
                case 0x72: Memo(BinaryPrimitives.ReadUInt32LittleEndian(Take(4))); break; // LONG_BINPUT
                case 0x94: Memo(_memo.Count); break;                                      // MEMOIZE
                case 0x68: Push(Recall(ReadByte())); break;                               // BINGET
                case 0x6a: Push(Recall(BinaryPrimitives.ReadUInt32LittleEndian(Take(4)))); break; // LONG_BINGET

                case 0x63: // GLOBAL "module\nname\n"
                {
                    string module = ReadLine();
                    string name = ReadLine();
                    Push(ResolveGlobal(module, name));
                    break;
                }
                case 0x93: // STACK_GLOBAL
                {
                    object? name = Pop(), module = Pop();
                    if (module is not string m || name is not string n) throw Error("STACK_GLOBAL needs two strings on the stack");
                    Push(ResolveGlobal(m, n));
                    break;
                }
                case 0x52: // REDUCE
                {
                    object? args = Pop(), callable = Pop();
                    Push(Call(callable, args, "REDUCE"));
                    break;
                }
                case 0x81: // NEWOBJ
                {
                    object? args = Pop(), cls = Pop();
                    Push(Call(cls, args, "NEWOBJ"));
                    break;
                }
                case 0x62: // BUILD
                {
                    Pop(); // the state
                    object? target = Peek();
                    // torch.save sets OrderedDict._metadata (module versions) this way; a loader does not need it.
                    if (target is not PickleDict)
                        throw Error($"BUILD on a {Describe(target)} is not supported (only an OrderedDict's _metadata is)");
                    break;
                }
                case 0x51: // BINPERSID
                    Push(_persistentLoad(Pop()));
                    break;

                default:
                    throw Error($"pickle opcode 0x{op:x2} is not supported; only the opcodes PyTorch uses for tensor state dicts are");
            }
        }
    }

    private object Call(object? callable, object? args, string opcode)
    {
        if (callable is not PickleGlobal g)
            throw Error($"{opcode} on a {Describe(callable)}; only allow-listed globals can be called");
        if (args is not PickleTuple t)
            throw Error($"{opcode} of {g.FullName} with {Describe(args)} arguments instead of a tuple");
        object?[] a = t.Items;
        switch (g.Kind)
        {
            case PickleGlobalKind.OrderedDict:
                if (a.Length != 0) throw Error($"{g.FullName} called with {a.Length} arguments; only OrderedDict() is supported");
                return new PickleDict();
            case PickleGlobalKind.RebuildTensorV2:
                return RebuildTensor(g, a);
            case PickleGlobalKind.RebuildParameter:
                // _rebuild_parameter(data, requires_grad, backward_hooks): the data is the tensor.
                if (a.Length < 1 || a[0] is not TensorRef data)
                    throw Error($"{g.FullName} needs a tensor as its first argument");
                return data;
            default:
                throw Error($"{g.FullName} cannot be called; storage classes appear only inside storage references");
        }
    }

    private TensorRef RebuildTensor(PickleGlobal g, object?[] a)
    {
        // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        if (a.Length is < 6 or > 7)
            throw Error($"{g.FullName} called with {a.Length} arguments instead of 6 or 7");
        if (a[0] is not StorageRef storage) throw Error($"{g.FullName}: argument 0 is a {Describe(a[0])}, not a storage");
        if (a[1] is not long offset || offset < 0) throw Error($"{g.FullName}: storage offset {Describe(a[1])} is not a non-negative integer");
        long[] size = LongTuple(a[2], g, "size");
        long[] stride = LongTuple(a[3], g, "stride");
        if (size.Length != stride.Length)
            throw Error($"{g.FullName}: size has {size.Length} dimensions but stride has {stride.Length}");
        return new TensorRef(storage, offset, size, stride);
    }

    private long[] LongTuple(object? o, PickleGlobal g, string what)
    {
        if (o is not PickleTuple t) throw Error($"{g.FullName}: {what} is a {Describe(o)}, not a tuple of integers");
        var r = new long[t.Items.Length];
        for (int i = 0; i < r.Length; i++)
        {
            if (t.Items[i] is not long v || v < 0)
                throw Error($"{g.FullName}: {what}[{i}] is {Describe(t.Items[i])}, not a non-negative integer");
            r[i] = v;
        }
        return r;
    }

    private PickleGlobal ResolveGlobal(string module, string name)
    {
        PickleGlobal? g = (module, name) switch
        {
            ("collections", "OrderedDict") => new(module, name, PickleGlobalKind.OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => new(module, name, PickleGlobalKind.RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => new(module, name, PickleGlobalKind.RebuildParameter),
            ("torch", _) or ("torch.storage", _) => StorageGlobal(module, name),
            _ => null,
        };
        return g ?? throw new PagSharpException(
            $"Refusing to load {module}.{name} from '{_file}' ({_entry} at byte {_opStart}): only tensor state dicts are supported.");
    }

    private static PickleGlobal? StorageGlobal(string module, string name)
    {
        TorchSharp.torch.ScalarType? type = (module, name) switch
        {
            ("torch", "FloatStorage") => TorchSharp.torch.ScalarType.Float32,
            ("torch", "DoubleStorage") => TorchSharp.torch.ScalarType.Float64,
            ("torch", "HalfStorage") => TorchSharp.torch.ScalarType.Float16,
            ("torch", "BFloat16Storage") => TorchSharp.torch.ScalarType.BFloat16,
            ("torch", "LongStorage") => TorchSharp.torch.ScalarType.Int64,
            ("torch", "IntStorage") => TorchSharp.torch.ScalarType.Int32,
            ("torch", "ShortStorage") => TorchSharp.torch.ScalarType.Int16,
            ("torch", "CharStorage") => TorchSharp.torch.ScalarType.Int8,
            ("torch", "ByteStorage") => TorchSharp.torch.ScalarType.Byte,
            ("torch", "BoolStorage") => TorchSharp.torch.ScalarType.Bool,
            ("torch", "UntypedStorage") or ("torch.storage", "UntypedStorage") => TorchSharp.torch.ScalarType.Byte,
            _ => null,
        };
        return type is null ? null : new PickleGlobal(module, name, PickleGlobalKind.Storage, TensorDTypes.FromScalarType(type.Value));
    }

    private void Memo(long index)
    {
        if (_stack.Count == 0) throw Error("memo store with an empty stack");
        if (_memo.Count >= _data.Length) throw Error("more memo entries than the pickle has bytes");
        _memo[index] = _stack[^1];
    }

    private object? Recall(long index) =>
        _memo.TryGetValue(index, out object? v) ? v : throw Error($"memo entry {index} is read before it is stored");

    private long ReadLong1()
    {
        int n = ReadByte();
        ReadOnlySpan<byte> b = Take(n);
        if (n > 8) throw Error($"integer of {n} bytes is too large (at most 8 are supported)");
        if (n == 0) return 0;
        long v = 0;
        for (int i = n - 1; i >= 0; i--) v = (v << 8) | b[i];
        if (n < 8 && (b[n - 1] & 0x80) != 0) v -= 1L << (8 * n); // two's complement sign
        return v;
    }

    private string ReadUtf8(ulong length)
    {
        ReadOnlySpan<byte> bytes = TakeLength(length);
        try
        {
            return new UTF8Encoding(false, true).GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw Error("a string is not valid UTF-8");
        }
    }

    private string ReadLine()
    {
        int end = Array.IndexOf(_data, (byte)'\n', _pos, Math.Min(256, _data.Length - _pos));
        if (end < 0) throw Error("GLOBAL name is not terminated by a newline within 256 bytes");
        string s = Encoding.ASCII.GetString(_data, _pos, end - _pos);
        _pos = end + 1;
        return s;
    }

    private ReadOnlySpan<byte> TakeLength(ulong length)
    {
        if (length > (ulong)(_data.Length - _pos))
            throw Error($"a string of {length} bytes runs past the end of the pickle ({_data.Length - _pos} bytes left)");
        return Take((int)length);
    }

    private ReadOnlySpan<byte> Take(int n)
    {
        if (n > _data.Length - _pos) throw Error("the pickle ends in the middle of an opcode (truncated?)");
        var s = new ReadOnlySpan<byte>(_data, _pos, n);
        _pos += n;
        return s;
    }

    private byte ReadByte()
    {
        if (_pos >= _data.Length) throw Error("the pickle ends without a STOP opcode (truncated?)");
        return _data[_pos++];
    }

    private void Push(object? o) => _stack.Add(o);

    private object? Peek()
    {
        if (_stack.Count == 0 || (_marks.Count > 0 && _marks.Peek() == _stack.Count)) throw Error("stack underflow");
        return _stack[^1];
    }

    private object? Pop()
    {
        object? o = Peek();
        _stack.RemoveAt(_stack.Count - 1);
        return o;
    }

    private List<object?> PopMark()
    {
        if (_marks.Count == 0) throw Error("an opcode needs a MARK but there is none");
        int start = _marks.Pop();
        List<object?> items = _stack.GetRange(start, _stack.Count - start);
        _stack.RemoveRange(start, _stack.Count - start);
        return items;
    }

    private PickleDict AsDict(object? o, string opcode) =>
        o as PickleDict ?? throw Error($"{opcode} on a {Describe(o)} instead of a dict");

    private List<object?> AsList(object? o, string opcode) =>
        o as List<object?> ?? throw Error($"{opcode} on a {Describe(o)} instead of a list");

    /// <summary>A short, non-recursive description of a value for messages.</summary>
    internal static string Describe(object? o) => o switch
    {
        null => "None",
        string => "string",
        long l => $"integer {l}",
        double => "float",
        bool => "bool",
        PickleTuple t => $"tuple of {t.Items.Length}",
        List<object?> => "list",
        PickleDict => "dict",
        PickleBytes => "byte string",
        PickleGlobal g => g.FullName,
        StorageRef => "storage",
        TensorRef => "tensor",
        _ => o.GetType().Name,
    };

    private PagSharpException Error(string problem) =>
        new($"Invalid PyTorch checkpoint '{_file}': {_entry}, byte {_opStart}: {problem}.");
}
