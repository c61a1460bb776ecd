using System.Reflection;
using System.Reflection.Emit;

namespace PagSharp.Tests.Architecture;

/// <summary>
/// Dependencies between the namespaces of the library and of the <c>pag</c> tool point one way (README "Architecture"):
/// the graph of which namespace uses which — from signatures, fields, base types and every type, method and field a method body touches (read from
/// its IL) — has no cycle.
/// </summary>
public sealed class NamespaceCycleTests
{
    private static readonly Assembly Library = typeof(PagSharpException).Assembly;
    private static readonly Assembly Tool = typeof(PagSharp.Cli.App).Assembly;

    [Fact]
    public void TheLibraryHasNoNamespaceCycle()
    {
        var graph = Graph(Library);
        Assert.True(graph.Count > 10, $"only {graph.Count} namespaces found");
        var cycle = FindCycle(graph);
        Assert.True(cycle is null, "namespace cycle: " + string.Join(" → ", cycle ?? []));
    }

    [Fact]
    public void TheToolHasNoNamespaceCycle()
    {
        var graph = Graph(Tool);
        Assert.True(graph.Count >= 5, $"only {graph.Count} namespaces found");
        // Commands sit above the web server, the method tokens and the hosting helpers; the app registers the commands.
        Assert.Contains("PagSharp.Cli.Commands", graph["PagSharp.Cli"]);
        Assert.Contains("PagSharp.Cli.Serve", graph["PagSharp.Cli.Commands"]);
        Assert.Contains("PagSharp.Cli.Methods", graph["PagSharp.Cli.Serve"]);
        var cycle = FindCycle(graph);
        Assert.True(cycle is null, "namespace cycle: " + string.Join(" → ", cycle ?? []));
    }

    [Fact]
    public void TheCheckFindsACycle()
    {
        var graph = new Dictionary<string, HashSet<string>>
        {
            ["A"] = ["B"], ["B"] = ["C"], ["C"] = ["A"], ["D"] = ["A"],
        };
        Assert.Equal(["A", "B", "C", "A"], FindCycle(graph));
        graph["C"].Clear();
        Assert.Null(FindCycle(graph));
    }

    /// <summary>The graph is built from real edges: a known one-way dependency is in it.</summary>
    [Fact]
    public void TheGraphHoldsKnownEdges()
    {
        var graph = Graph(Library);
        Assert.Contains("PagSharp.Denoisers", graph["PagSharp.Guidance"]);
        Assert.Contains("PagSharp.Models.Adm", graph["PagSharp.Denoisers"]);
        Assert.DoesNotContain("PagSharp.Guidance", graph["PagSharp.Denoisers"]);
    }

    private static Dictionary<string, HashSet<string>> Graph(Assembly assembly)
    {
        var graph = new Dictionary<string, HashSet<string>>(StringComparer.Ordinal);
        foreach (var type in assembly.GetTypes())
        {
            string? from = NamespaceOf(type, assembly);
            if (from is null) continue;
            var edges = graph.TryGetValue(from, out var e) ? e : graph[from] = new HashSet<string>(StringComparer.Ordinal);
            foreach (var used in UsedTypes(type))
                if (NamespaceOf(used, assembly) is { } to && to != from) edges.Add(to);
        }
        return graph;
    }

    /// <summary>The namespace of a type of <paramref name="assembly"/> (generic arguments and nesting resolved), or null for other assemblies.</summary>
    private static string? NamespaceOf(Type t, Assembly assembly)
    {
        while (t.HasElementType) t = t.GetElementType()!;
        while (t.DeclaringType is not null) t = t.DeclaringType;
        if (t.Assembly != assembly || t.Namespace is null || t.Name.StartsWith('<')) return null;
        return t.Namespace.StartsWith("PagSharp", StringComparison.Ordinal) ? t.Namespace : null;
    }

    private const BindingFlags All = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    private static IEnumerable<Type> UsedTypes(Type type)
    {
        var found = new List<Type>();
        void Add(Type? t)
        {
            if (t is null) return;
            found.Add(t);
            if (t.IsGenericType && !t.IsGenericTypeDefinition) foreach (var a in t.GetGenericArguments()) Add(a);
            if (t.HasElementType) Add(t.GetElementType());
        }
        Add(type.BaseType);
        foreach (var i in type.GetInterfaces()) Add(i);
        foreach (var f in type.GetFields(All)) Add(f.FieldType);
        foreach (var p in type.GetProperties(All)) Add(p.PropertyType);
        var methods = type.GetMethods(All).Cast<MethodBase>().Concat(type.GetConstructors(All));
        foreach (var m in methods)
        {
            if (m is MethodInfo mi) Add(mi.ReturnType);
            foreach (var p in m.GetParameters()) Add(p.ParameterType);
            foreach (var member in BodyReferences(m))
                switch (member)
                {
                    case Type t: Add(t); break;
                    case MethodBase mb: Add(mb.DeclaringType); if (mb is MethodInfo r) Add(r.ReturnType); break;
                    case FieldInfo fi: Add(fi.DeclaringType); Add(fi.FieldType); break;
                }
        }
        // Compiler-generated nested types (lambdas, iterators, async) belong to their declaring type.
        foreach (var nested in type.GetNestedTypes(All)) found.AddRange(UsedTypes(nested));
        return found;
    }

    private static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes).GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!).ToDictionary(o => o.Value);

    /// <summary>Every type, method and field token in a method body's IL.</summary>
    private static IEnumerable<MemberInfo> BodyReferences(MethodBase method)
    {
        byte[]? il;
        try { il = method.GetMethodBody()?.GetILAsByteArray(); }
        catch (InvalidOperationException) { yield break; }
        if (il is null) yield break;
        var module = method.Module;
        Type[]? typeArgs = method.DeclaringType is { IsGenericType: true } d ? d.GetGenericArguments() : null;
        Type[]? methodArgs = method.IsGenericMethod ? method.GetGenericArguments() : null;
        int pos = 0;
        while (pos < il.Length)
        {
            short value = il[pos++];
            if (value == 0xFE) value = (short)(0xFE00 | il[pos++]);
            if (!OpCodesByValue.TryGetValue(value, out var op)) yield break; // not a valid opcode: stop reading
            int operand = op.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, pos),
                _ => 4,
            };
            if (op.OperandType is OperandType.InlineMethod or OperandType.InlineField or OperandType.InlineType or OperandType.InlineTok)
            {
                MemberInfo? member = null;
                try { member = module.ResolveMember(BitConverter.ToInt32(il, pos), typeArgs, methodArgs); }
                catch (ArgumentException) { }
                catch (BadImageFormatException) { }
                if (member is not null) yield return member;
            }
            pos += operand;
        }
    }

    /// <summary>A cycle as a path that returns to its start, or null.</summary>
    private static List<string>? FindCycle(Dictionary<string, HashSet<string>> graph)
    {
        var state = new Dictionary<string, int>(); // 1 = on the stack, 2 = done
        var stack = new List<string>();
        List<string>? Visit(string n)
        {
            state[n] = 1;
            stack.Add(n);
            foreach (var m in (graph.TryGetValue(n, out var e) ? e : []).Order(StringComparer.Ordinal))
            {
                if (state.GetValueOrDefault(m) == 1) return stack.SkipWhile(s => s != m).Append(m).ToList();
                if (state.GetValueOrDefault(m) == 0 && Visit(m) is { } c) return c;
            }
            stack.RemoveAt(stack.Count - 1);
            state[n] = 2;
            return null;
        }
        foreach (var n in graph.Keys.Order(StringComparer.Ordinal))
            if (state.GetValueOrDefault(n) == 0 && Visit(n) is { } cycle) return cycle;
        return null;
    }
}
